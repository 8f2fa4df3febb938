r"""SANSformer (Kumar et al., 2108.13672) on synthetic patient visit histories (`patient_visits`).

Two stages, as the paper: Generative Summary Pretraining (`stage=gsp`: at every visit, the summary statistics
of the next year: visit count and diagnoses per chapter; count_regression task, Poisson loss) and fine-tuning
for future utilisation (`stage=finetune`: regress the number of visits in the next year, count_regression
task; `buckets=1` classifies it into three buckets instead). `pretrained=GSP_WORKDIR` starts fine-tuning
from the GSP run's latest checkpoint: every parameter but the head (the trainer's warm start, config.init_from).

Launch (CPU, about a minute each):
  python -m experiments.main --config=experiments/configs/sansformer_visits.py:runlocal --workdir=/tmp/sansformer_visits
  python -m experiments.main --config=experiments/configs/sansformer_visits.py:stage=gsp,runlocal --workdir=/tmp/sansformer_gsp
  python -m experiments.main --config=experiments/configs/sansformer_visits.py:runlocal,pretrained=/tmp/sansformer_gsp \
      --workdir=/tmp/sansformer_finetuned
Full runs:
  python -m experiments.main --config=experiments/configs/sansformer_visits.py:stage=gsp --workdir=/tmp/sansformer_gsp_full
  python -m experiments.main --config=experiments/configs/sansformer_visits.py:pretrained=/tmp/sansformer_gsp_full \
      --workdir=/tmp/sansformer_visits_full
"""
from experiments.configs.common import parse_arg
from fintrans.data.builders import patient_visits as pv
from fintrans.models.sansformer import HEAD
from fintrans.train.config import default_config, model_fields

STAGES = {"finetune": ("count_regression", "regress", 0), "gsp": ("count_regression", "gsp", 1)}


def get_config(arg=None):
    arg = parse_arg(arg, runlocal=False, stage="finetune", pretrained="", buckets=False)
    if arg.stage not in STAGES:
        raise ValueError(f"stage={arg.stage!r} is not valid; choose from {sorted(STAGES)}")
    task, mode, gsp = STAGES[arg.stage]
    if arg.pretrained and arg.stage != "finetune":
        raise ValueError("pretrained= starts fine-tuning from a GSP run; it needs stage=finetune")
    if arg.buckets and arg.stage != "finetune":
        raise ValueError("buckets= is a fine-tuning target; it needs stage=finetune")
    if arg.buckets:  # the 3-bucket classification of the count, kept as an option
        task, mode = "classification", "classify"
    c = default_config()
    c.task = task
    c.data.name = "patient_visits"
    c.data.gsp = gsp
    c.data.buckets = int(bool(arg.buckets))
    sizes = dict(seq_len=pv.HISTORY_LEN, num_features=pv.NUM_FEATURES, num_classes=pv.NUM_CLASSES,
                 num_summaries=pv.NUM_SUMMARIES, mode=mode)
    # The authors' proportions (res/gate 2x, FFN 4x the width); their MIMIC model is 256 wide, 6 layers deep.
    c.model = model_fields("sansformer", embed_dim=64, hidden_dim=128, mlp_dim=256, num_layers=4, dropout_rate=0.1,
                           **sizes)
    c.batch_size = 64
    c.eval_batch_size = 128
    c.total_steps = 3000
    c.optimizer.learning_rate = 1e-3
    c.optimizer.warmup_steps = 150
    c.optimizer.weight_decay = 0.01
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 1000
    c.sample.num_examples = 8
    if arg.pretrained:
        c.init_from, c.init_from_keep_fresh = arg.pretrained, HEAD
    if arg.runlocal:
        c.model = model_fields("sansformer", embed_dim=32, hidden_dim=64, mlp_dim=128, num_layers=2, **sizes)
        c.total_steps = 300
        c.optimizer.learning_rate = 3e-3
        c.optimizer.warmup_steps = 30
        c.log_every = 25
        c.eval_every = 150
        c.checkpoint_every = 150
    return c
