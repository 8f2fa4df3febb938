r"""FinAI-BERT (docs/papers.md): BERT encoder, [CLS] -> linear, sentence-level detection of
AI disclosures, on the synthetic bank-report sentences of fintrans.data (`finai_sentences`).

Launch (CPU, under a minute):
  python -m experiments.main --config=experiments/configs/bert_finai.py:runlocal --workdir=/tmp/bert_finai
bert-base, as in the paper (12 layers, 768 wide, 12 heads; TPU/GPU hosts sharing WORKDIR):
  python -m experiments.main --config=experiments/configs/bert_finai.py --workdir=/mnt/shared/bert_finai \
      --config.mesh.fsdp=4 --config.multihost=True
"""
from experiments.configs.common import parse_arg
from fintrans.train.config import default_config, model_fields


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False)
    c = default_config()
    c.task = "classification"
    c.data.name = "finai_sentences"
    c.data.max_len = 64
    # bert-base; vocab_size is the synthetic corpus's word vocabulary, not WordPiece's 30,522.
    c.model = model_fields("bert_classifier", vocab_size=607, max_len=512, embed_dim=768, num_layers=12,
                           num_heads=12, mlp_dim=3072, num_classes=2, dropout_rate=0.1)
    c.batch_size = 32
    c.eval_batch_size = 100
    c.total_steps = 3000
    c.optimizer.learning_rate = 2e-5  # the usual BERT fine-tuning rate
    c.optimizer.warmup_steps = 300
    c.optimizer.weight_decay = 0.01
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.sample.num_examples = 6
    if arg.runlocal:
        c.model = model_fields("bert_classifier", vocab_size=607, max_len=64, embed_dim=64, num_layers=2,
                               num_heads=4, mlp_dim=128, num_classes=2, dropout_rate=0.1)
        c.total_steps = 300
        c.optimizer.learning_rate = 1e-3
        c.optimizer.warmup_steps = 30
        c.log_every = 20
        c.eval_every = 150
        c.checkpoint_every = 150
    return c
