r"""FinAI-BERT (docs/papers.md): BERT encoder, [CLS] -> linear, sentence-level detection of
AI disclosures, on the synthetic bank-report sentences of fintrans.data (`finai_sentences`, its hard
generator: 1,586 sentences as in the paper, 3% of the train labels flipped).

Launch (CPU, about a minute):
  python -m experiments.main --config=experiments/configs/bert_finai.py:runlocal --workdir=/tmp/bert_finai
bert-base, trained as the authors did (TPU/GPU hosts sharing WORKDIR):
  python -m experiments.main --config=experiments/configs/bert_finai.py --workdir=/mnt/shared/bert_finai \
      --config.mesh.fsdp=4 --config.multihost=True
The original easy sentences: --config.data.generator=easy --config.data.label_noise=0.

The full config follows the authors' training (their model card: bert-base-uncased, Hugging Face
Trainer defaults, 3 epochs, batch 8, max sequence length 128, AdamW at 5e-5, no warmup, no weight
decay, gradient clipping at 1.0). Differences from the authors:
  * the authors fine-tune the pre-trained bert-base-uncased checkpoint; nothing can be downloaded
    here, so every run trains from random initialisation (`init_from` or
    fintrans.models.bert.params_from_transformers load a checkpoint where one is at hand);
  * word-level tokens over the synthetic corpus' vocab, not WordPiece's 30,522;
  * the learning rate decays by a cosine to 0, not linearly (fintrans.train's one schedule);
  * synthetic sentences, not their 1,586 annotated sentences (which are not public).
runlocal is a small BERT (2 layers, 64 wide) trained from scratch at a from-scratch learning rate;
the claim script (experiments/claims/finai_bert.py) trains it.
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields

VOCAB_SIZE = 1086  # finai_sentences' word vocab (both generators); the trainer checks it against the data
NUM_TRAIN = 1108  # finai_sentences' hard train split
BATCH_SIZE = 8  # the authors'
EPOCHS = 3  # the authors'


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = default_config()
    c.task = "classification"
    c.data.name = "finai_sentences"
    c.data.max_len = 128  # the authors' max_seq_length
    c.data.generator = "hard"
    c.data.label_noise = 0.03
    # bert-base; vocab_size is the synthetic corpus's word vocabulary, not WordPiece's 30,522.
    c.model = model_fields("bert_classifier", vocab_size=VOCAB_SIZE, max_len=512, embed_dim=768, num_layers=12,
                           num_heads=12, mlp_dim=3072, num_classes=2, dropout_rate=0.1)
    steps_per_epoch = -(-NUM_TRAIN // BATCH_SIZE)
    c.batch_size = BATCH_SIZE
    c.eval_batch_size = 80
    c.total_steps = EPOCHS * steps_per_epoch
    # Hugging Face Trainer defaults: AdamW(5e-5, betas 0.9/0.999, eps 1e-8), no warmup, no weight decay.
    c.optimizer.learning_rate = 5e-5
    c.optimizer.warmup_steps = 0
    c.optimizer.end_lr_ratio = 0.0
    c.optimizer.weight_decay = 0.0
    c.optimizer.grad_clip_norm = 1.0
    c.log_every = 20
    c.eval_every = steps_per_epoch
    c.checkpoint_every = steps_per_epoch
    c.sample.num_examples = 6
    if arg.runlocal:
        c.data.max_len = 48  # the longest hard sentence is 37 tokens with [CLS] and [SEP]
        c.model = model_fields("bert_classifier", vocab_size=VOCAB_SIZE, max_len=48, embed_dim=64, num_layers=2,
                               num_heads=4, mlp_dim=128, num_classes=2, dropout_rate=0.1)
        c.batch_size = 32
        c.total_steps = 400  # ~12 epochs: from scratch needs more than the authors' 3 epochs of fine-tuning
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 40
        c.optimizer.weight_decay = 0.01
        c.log_every = 20
        c.eval_every = 200
        c.checkpoint_every = 200
    return c
