"""Fine-tuning config: the pretraining sections plus the head, regularisation and evaluation."""

from __future__ import annotations

from dataclasses import dataclass, field

from pretrain.config import DataConfig, DistConfig, OptimConfig, RunConfig, _check


@dataclass
class HeadConfig:
    """Classifier head, probes and the fine-tuning regularisers."""

    kind: str = "finetune"
    """``finetune`` (whole encoder trained), ``linear`` or ``attentive`` (frozen-encoder probes)."""
    num_classes: int = 0
    """Classes (0: read from the shards' classes.json)."""
    dropout: float = 0.0
    """Dropout before the linear layer."""
    init_scale: float = 1e-3
    """Scale of the head's initial weights (VideoMAE: 0.001)."""
    label_smoothing: float = 0.1
    """Label smoothing of the cross-entropy (also applied inside mixup targets)."""
    mixup: float = 0.0
    """Mixup alpha (0 disables)."""
    cutmix: float = 0.0
    """Video-aware cutmix alpha: one spatial box across all frames (0 disables)."""
    mix_prob: float = 1.0
    """Probability of applying mixup/cutmix to a batch."""
    mix_switch_prob: float = 0.5
    """Probability of cutmix instead of mixup when both are on."""
    random_erasing: float = 0.0
    """Probability of erasing one random box in every frame of a clip (on the device)."""

    def __post_init__(self):
        _check(self.kind in ("finetune", "linear", "attentive"), "head.kind",
               f"must be finetune|linear|attentive, got {self.kind!r}")
        _check(self.num_classes >= 0, "head.num_classes", "must be >= 0")
        _check(0 <= self.dropout < 1, "head.dropout", "must be in [0, 1)")
        _check(self.init_scale > 0, "head.init_scale", "must be > 0")
        _check(0 <= self.label_smoothing < 1, "head.label_smoothing", "must be in [0, 1)")
        _check(self.mixup >= 0 and self.cutmix >= 0, "head.mixup/cutmix", "alphas must be >= 0")
        _check(0 <= self.mix_prob <= 1 and 0 <= self.mix_switch_prob <= 1, "head.mix_prob", "must be in [0, 1]")
        _check(0 <= self.random_erasing <= 1, "head.random_erasing", "must be in [0, 1]")


@dataclass
class FinetuneModelConfig:
    """The model fine-tuning builds: its own section (the pretraining one's masking and warm-start
    keys mean nothing here and are refused as unknown keys; the weights come from ``init``)."""

    name: str = "vit_small"
    """Encoder name (``vit_*``, ``mvitv2_*``) or a baseline (``finetune.baselines.list_baselines()``);
    with ``init`` the encoder's architecture comes from that source and this only names the run."""
    drop_path: float = 0.0
    """Stochastic depth rate of the encoder (VideoMAE fine-tuning: 0.1 for ViT-B)."""
    grad_checkpointing: bool = False
    """Activation checkpointing in the encoder blocks (ViT and MViT encoders; not the baselines)."""
    kwargs: dict = field(default_factory=dict)
    """Extra keyword overrides passed to ``create_model`` / ``create_baseline`` (scratch only)."""

    def __post_init__(self):
        _check(bool(self.name), "model.name", "must be set")
        _check(0.0 <= self.drop_path < 1.0, "model.drop_path", "must be in [0, 1)")


@dataclass
class FinetuneOptimConfig(OptimConfig):
    """AdamW and its schedule with the VideoMAE fine-tuning defaults (blr 1e-3, betas (0.9, 0.999),
    layer decay 0.75), which a partial ``optim`` section (``optim.warmup_steps=5``) keeps."""

    blr: float = 1e-3
    """Base learning rate; the actual LR is ``blr x videos per step / 256`` unless ``lr`` is set."""
    betas: tuple = (0.9, 0.999)
    """AdamW betas (VideoMAE fine-tuning: 0.9, 0.999)."""
    layer_decay: float = 0.75
    """Layer-wise LR decay (VideoMAE fine-tuning: 0.75; 1.0 disables)."""


@dataclass
class FinetuneRunConfig(RunConfig):
    """Run directory, length (steps or epochs), checkpoints, logging, and the recipe's published batch."""

    epochs: float = 0.0
    """Length in epochs (VideoMAE's ``--epochs``); > 0 replaces ``run.max_steps`` (0: use it; a smoke
    run of an epoch preset sets ``run.epochs=0 run.max_steps=N``). One epoch = ``steps_per_epoch =
    data.num_videos // videos_per_step`` optimizer steps, ``videos_per_step = data.batch_size x
    dist.grad_accum x world size / data.num_repeats`` (VideoMAE: ``len(dataset) // total_batch``,
    total_batch counted in videos, each giving ``--num_sample`` clips); ``max_steps = int(epochs x
    steps_per_epoch)``. E.g. K400 240000 videos at 512 videos/step: 468 steps/epoch, 75 epochs = 35100
    steps. Printed at the start and recorded in ``recipe.json``. Recomputed at every start: a run
    resumed with another batch (e.g. fewer processes) keeps its epochs, not its step count."""
    published_batch: int = 0
    """Videos per optimizer step of the published recipe this preset reproduces (0: none stated). A
    run whose videos per step differ says so loudly at the start (stdout and stderr) and records it
    in ``recipe.json``; the LR still follows the rule (``optim.blr x videos / 256``)."""

    def __post_init__(self):
        super().__post_init__()
        _check(self.epochs >= 0, "run.epochs", f"must be >= 0, got {self.epochs}")
        _check(self.published_batch >= 0, "run.published_batch", f"must be >= 0, got {self.published_batch}")


@dataclass
class EvalConfig:
    """Validation during training and the final multi-view evaluation."""

    every: int = 0
    """Validate every N steps (0: only at the end)."""
    max_videos: int = 0
    """Cap on validation videos during training (0: all); the final evaluation uses all."""

    def __post_init__(self):
        _check(self.every >= 0, "eval.every", "must be >= 0")
        _check(self.max_videos >= 0, "eval.max_videos", "must be >= 0")


@dataclass
class FinetuneConfig:
    """Everything ``tubelet finetune`` needs."""

    data: DataConfig = field(default_factory=DataConfig)
    """Data path (``data.shards`` = labeled train shards, ``data.val_shards`` = evaluation shards)."""
    model: FinetuneModelConfig = field(default_factory=FinetuneModelConfig)
    """Encoder name (``vit_*``, ``mvitv2_*``) or a baseline (``finetune.baselines.list_baselines()``)."""
    optim: FinetuneOptimConfig = field(default_factory=FinetuneOptimConfig)
    """Optimizer and schedule (VideoMAE fine-tune recipe: blr 1e-3, layer decay 0.75)."""
    dist: DistConfig = field(default_factory=DistConfig)
    """Distribution."""
    run: FinetuneRunConfig = field(default_factory=FinetuneRunConfig)
    """Run directory and length (``run.epochs`` / ``optim.warmup_epochs`` with ``data.num_videos``)."""
    head: HeadConfig = field(default_factory=HeadConfig)
    """Head, probes and regularisation."""
    eval: EvalConfig = field(default_factory=EvalConfig)
    """Evaluation."""
    init: str = ""
    """Initialise the encoder from a pretraining run dir, checkpoint or exported encoder dir ('' = scratch)."""

    def __post_init__(self):
        _check(not (self.head.mixup > 0 or self.head.cutmix > 0) or self.data.batch_size % 2 == 0,
               "data.batch_size", f"mixup/cutmix pair clips within a batch: use an even batch size "
               f"(got {self.data.batch_size}) or set head.mixup=0 head.cutmix=0")
