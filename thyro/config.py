"""Typed run configuration, loaded from YAML.

Every job reads one `Config`. Unknown keys and wrong types are rejected with a
message that names the key and the file, because a silently ignored typo in a
medical-imaging experiment (``focal_gama: 0``) produces results nobody can trust.
The resolved config is written next to every run (`save_config`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

import re

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """A configuration file or override is invalid."""


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads `1e-4` as a float (YAML 1.1 wants `1.0e-4`)."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
                |\.[0-9_]+(?:[eE][-+][0-9]+)?
                |[-+]?\.(?:inf|Inf|INF)
                |\.(?:nan|NaN|NAN))$""", re.X),
    list("-+0123456789."))


def yaml_load(text: str):
    return yaml.load(text, Loader=_Loader)


class _Section(BaseModel):
    # strict: YAML "1e-4" (a string) must not silently become a float, nor 1 a bool.
    model_config = ConfigDict(extra="forbid", strict=True, validate_assignment=True)


class PhantomConfig(_Section):
    n_benign: int = Field(415, ge=1)
    n_malignant: int = Field(93, ge=1)
    size: int = Field(256, ge=64, le=2048)
    seed: int = 0
    # 0: the TI-RADS-like feature tables as they are (they overlap already);
    # 1: both classes drawn from the pooled tables (indistinguishable).
    overlap: float = Field(0.0, ge=0.0, le=1.0)
    # Fraction of patients that contribute more than one image (study: 0).
    multi_image_fraction: float = Field(0.0, ge=0.0, le=1.0)
    max_images_per_patient: int = Field(3, ge=1)
    # "simple": square grey scans with a fixed overlay; "scanner": screens of
    # varying aspect, field kind and panes with text, scales, body marker, logo, calipers.
    layout: Literal["simple", "scanner"] = "simple"
    # How much the scanner overlays depend on the class (0: not at all; 1: calipers,
    # category text and scanner strongly follow it, as in clinical archives).
    shortcuts: float = Field(0.0, ge=0.0, le=1.0)


class DataConfig(_Section):
    # "phantom" (generated into `phantom_dir`), a folder with one subfolder per
    # class (or holding a manifest.csv), or a CSV manifest `path,label[,patient_id]`;
    # local path or URI.
    source: str = "phantom"
    phantom_dir: str = "data/phantom"
    phantom: PhantomConfig = Field(default_factory=PhantomConfig)


class PreprocessConfig(_Section):
    # A named preset from thyro.image.transforms.PRESETS; every other key overrides one
    # of its fields (null: the preset's). The resolved preset is saved with the model.
    preset: str = "study"
    image_size: Optional[int] = Field(None, ge=32, le=1024)
    resize: Optional[Literal["squash", "letterbox"]] = None
    field: Optional[Literal["none", "auto", "inscribed"]] = None
    panes: Optional[Literal["largest", "all", "each"]] = None
    suppress_marks: Optional[bool] = None
    # Multi-frame DICOM: the frame that trains, is scored by default and is shown in reports.
    frame: Optional[Literal["first", "middle"]] = None
    augment: Optional[Literal["study", "robust"]] = None
    rotation_degrees: Optional[float] = Field(None, ge=0.0, le=180.0)
    hflip_p: Optional[float] = Field(None, ge=0.0, le=1.0)
    crop_scale: Optional[float] = Field(None, gt=0.0, le=1.0)
    intensity: Optional[float] = Field(None, ge=0.0, le=1.0)
    speckle: Optional[float] = Field(None, ge=0.0, le=1.0)


class ModelConfig(_Section):
    name: Literal["resnet18", "alexnet", "vgg16", "inception_v3"] = "resnet18"
    # null: random init; "imagenet": torchvision's weights, from the torch hub
    # cache or downloaded once (hash-checked); a folder ending in "/" holding
    # torchvision's files; otherwise a path or fsspec URI to a state_dict.
    weights: Optional[str] = None
    # Never download weights (as THYRO_OFFLINE=1 does): a missing "imagenet"
    # file fails before any Ray work, saying which file to put where.
    offline: bool = False


class TrainConfig(_Section):
    epochs: int = Field(10, ge=1)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-4, gt=0.0)
    weight_decay: float = Field(0.0, ge=0.0)
    loss: Literal["focal", "cross_entropy"] = "focal"
    # The study: Adam at a constant rate. "adamw" + "cosine" (with warm-up) is the robust recipe's.
    optimizer: Literal["adam", "adamw"] = "adam"
    schedule: Literal["constant", "cosine"] = "constant"
    warmup_epochs: int = Field(0, ge=0)
    # Exponential moving average of the weights (0: off; e.g. 0.99); the average is what is saved.
    ema_decay: float = Field(0.0, ge=0.0, lt=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    # Weight of the malignant class; null weighs both classes equally.
    focal_alpha: Optional[float] = Field(None, ge=0.0, le=1.0)
    # "bf16" autocast: ~3x faster on AMX CPUs and on GPUs (see README figures).
    precision: Literal["fp32", "bf16"] = "fp32"
    channels_last: bool = False
    device: str = "auto"
    num_workers: int = Field(0, ge=0)
    seed: int = 0
    # Upper bound on torch intra-op threads; 0 leaves torch's default.
    threads: int = Field(0, ge=0)
    # Jobs that train many times on the same images (experiment, tune) crop each image once
    # per crop setting, in Ray tasks before the trials, and start every training from those
    # crops (thyro/data/crop_cache.py) instead of cropping the data set again in each.
    crop_cache: bool = True


class SplitConfig(_Section):
    n_repeats: int = Field(10, ge=1)
    test_size: float = Field(0.3, gt=0.0, lt=1.0)
    seed: int = 0
    # Which repetition `thyro train` uses.
    repeat: int = Field(0, ge=0)
    # Fraction of patients set aside first as the development set of `thyro tune`:
    # in no test split, in the training part of every split.
    dev_fraction: float = Field(0.0, ge=0.0, lt=0.5)


class EvalConfig(_Section):
    # The study's operating point: accuracy, recall, precision, F1 and specificity at it.
    threshold: float = Field(0.5, gt=0.0, lt=1.0)
    target_sensitivity: float = Field(0.95, gt=0.0, le=1.0)
    # Patients of the training part held back (grouped, stratified) to choose the
    # operating threshold at `target_sensitivity` and fit temperature scaling, so the
    # test set never chooses them. 0: none held back; the card keeps `threshold`.
    calibration_fraction: float = Field(0.2, ge=0.0, le=0.5)
    bootstrap: int = Field(1000, ge=0)
    batch_size: int = Field(64, ge=1)


class CamConfig(_Section):
    # Which class the map explains. The shape analysis compares benign with malignant
    # maps, which only means something when every map explains the same class.
    target: Literal["predicted", "malignant", "benign"] = "malignant"
    # Threshold (fraction of the map's max) that defines the highlighted region.
    region_threshold: float = Field(0.5, gt=0.0, lt=1.0)
    # The hooked module; null: the last conv block (ResNet "layer4", 7x7 at 224 px).
    # "layer3" is twice as fine; shapes measured on a 7x7 map mostly reflect interpolation.
    layer: Optional[str] = None
    # Deletion / insertion curves (RISE) for this many test images per run (0: off).
    faithfulness_images: int = Field(64, ge=0)
    faithfulness_steps: int = Field(16, ge=2, le=256)


ModelName = Literal["resnet18", "alexnet", "vgg16", "inception_v3"]


class ExperimentConfig(_Section):
    # The study compared ResNet18 with three baselines over 10 splits.
    models: list[ModelName] = Field(default_factory=lambda: ["resnet18", "alexnet", "inception_v3", "vgg16"])
    reference_model: ModelName = "resnet18"
    # Which split repetitions to run; null runs all `split.n_repeats`.
    splits: Optional[list[int]] = None
    # Grad-CAM analysis of the reference model's test images in every split.
    cam_analysis: bool = True
    cam_size: int = Field(56, ge=8, le=512)
    # Images per class in the report's CAM overlay grid.
    cam_grid_per_class: int = Field(6, ge=1, le=20)


class PretrainConfig(_Section):
    """Self-supervised pretraining (`thyro pretrain`, thyro.model.ssl / thyro.model.pretraining)."""
    # SimSiam: no negatives, no momentum encoder; works at batch 32-64 (thyro/model/ssl.py says why).
    method: Literal["simsiam"] = "simsiam"
    backbone: Literal["resnet18", "alexnet", "vgg16"] = "resnet18"
    epochs: int = Field(20, ge=1)
    batch_size: int = Field(64, ge=2)
    # SGD: the paper's 0.05 x batch / 256 is for ImageNet-long schedules; short runs on
    # small data want more. AdamW: ~1e-3.
    lr: float = Field(0.05, gt=0.0)
    weight_decay: float = Field(1e-4, ge=0.0)
    optimizer: Literal["sgd", "adamw"] = "sgd"
    warmup_epochs: int = Field(0, ge=0)
    # The preset that crops each image to its scan field (and gives mean / std).
    preset: str = "field"
    image_size: int = Field(128, ge=32, le=1024)
    proj_dim: int = Field(2048, ge=8)
    pred_dim: int = Field(512, ge=4)
    precision: Literal["fp32", "bf16"] = "bf16"
    channels_last: bool = True
    seed: int = 0
    checkpoint_every_steps: int = Field(50, ge=1)
    max_images: int = Field(0, ge=0)  # 0: every image of the input
    # Augmentation strengths of the two views (thyro/image/views.py).
    crop_scale: float = Field(0.3, gt=0.0, le=1.0)
    hflip_p: float = Field(0.5, ge=0.0, le=1.0)
    rotation_degrees: float = Field(10.0, ge=0.0, le=180.0)
    intensity: float = Field(0.4, ge=0.0, le=1.0)
    speckle: float = Field(0.2, ge=0.0, le=1.0)
    blur_p: float = Field(0.5, ge=0.0, le=1.0)
    blur_sigma: float = Field(1.5, gt=0.1, le=10.0)

    def view_strengths(self) -> dict:
        return {k: getattr(self, k) for k in ("crop_scale", "hflip_p", "rotation_degrees", "intensity",
                                              "speckle", "blur_p", "blur_sigma")}


class RayConfig(_Section):
    # null: RAY_ADDRESS if set, else a local Ray started in-process.
    address: Optional[str] = None
    num_workers: int = Field(1, ge=1)          # Ray Train workers per trial (DDP when > 1)
    use_gpu: bool = False
    cpus_per_worker: float = Field(1.0, gt=0)
    # Fractional GPUs let several ResNet18 trials share one device.
    gpus_per_worker: float = Field(1.0, gt=0)
    # The Tune trial only drives its TorchTrainer; it must not hold a CPU
    # (on a 2-CPU machine a whole CPU per driver deadlocks the workers).
    trial_driver_cpus: float = Field(0.01, gt=0)
    max_concurrent_trials: int = Field(0, ge=0)  # 0: as many as resources allow
    max_failures: int = Field(1, ge=0)           # retries of a crashed trial
    # A single-worker CPU trial raises its torch threads at epoch boundaries to the CPUs
    # its node has free (the last trial then uses the cores the others left). Off by
    # default: the thread count changes float rounding, so results then depend on timing.
    elastic_threads: bool = False
    # Where Ray Tune/Train keep their state; null: <out>/ray.
    storage_path: Optional[str] = None


class SearchConfig(_Section):
    """Hyperparameter search (`thyro tune`). Ranges are [low, high]; lists are choices."""
    num_samples: int = Field(16, ge=1)
    # Configurations are scored on inner splits of the development set (split.dev_fraction).
    inner_splits: int = Field(2, ge=1)
    inner_test_size: float = Field(0.3, gt=0.0, lt=1.0)
    seed: int = 0
    # ASHA: a trial runs at least `grace_period` epochs before it can be stopped.
    grace_period: int = Field(2, ge=1)
    reduction_factor: int = Field(3, ge=2)
    lr: list[float] = Field(default_factory=lambda: [1e-5, 1e-3], min_length=2, max_length=2)
    weight_decay: list[float] = Field(default_factory=lambda: [1e-6, 1e-3], min_length=2, max_length=2)
    focal_gamma: list[float] = Field(default_factory=lambda: [0.0, 3.0], min_length=2, max_length=2)
    focal_alpha: list[Optional[float]] = Field(default_factory=lambda: [None, 0.25, 0.5, 0.75], min_length=1)
    batch_size: list[int] = Field(default_factory=lambda: [16, 32], min_length=1)
    rotation_degrees: list[float] = Field(default_factory=lambda: [0.0, 30.0], min_length=2, max_length=2)
    hflip_p: list[float] = Field(default_factory=lambda: [0.0, 0.5], min_length=1)
    image_size: list[int] = Field(default_factory=lambda: [224], min_length=1)


# Side files that sit next to images in exported archives (a labels CSV, a report PDF).
SIDE_FILE_EXTENSIONS = [".csv", ".txt", ".json", ".xml", ".pdf", ".md", ".html", ".htm", ".log", ".ini", ".xlsx",
                        ".xls", ".doc", ".docx", ".db", ".ds_store"]


class ScoreConfig(_Section):
    # DICOM multi-frame: null scores the frame the model trained on (its preset's
    # `frame`); or the first, the middle, or all frames (`frame` column).
    frames: Optional[Literal["first", "middle", "all"]] = None
    # With frames: all, a cine loop is sampled: every frame_step-th frame, then at
    # most max_frames of those (0: no limit), evenly spaced, the first included.
    frame_step: int = Field(1, ge=1)
    max_frames: int = Field(0, ge=0)
    batch_size: int = Field(32, ge=1)
    # Deletion / insertion curves (RISE) per row with this many steps: 4 (steps + 1)
    # extra forward passes per image. 0: off.
    faithfulness_steps: int = Field(0, ge=0, le=256)
    # Inputs handed to Ray Data at a time, and at most this many MiB of inline
    # bytes (tar members): bounds the driver's memory. Each chunk is one
    # streaming Ray Data run, so larger chunks pay the actor start-up less often.
    chunk_size: int = Field(20000, ge=1)
    chunk_mib: int = Field(256, ge=1)
    # Rows per Parquet file: fewer, larger files; a kill loses at most this many.
    rows_per_file: int = Field(1000, ge=1)
    # Predictor actor pool; on 2 CPUs a whole CPU per actor starves the read tasks. The pool
    # starts at min_actors and grows to actors as nodes join (README: "Ray Data knobs").
    # How the stages run: split (CPU tasks decode and finish around the predictor actors) or fused
    # (each actor does all of it for a block); auto: split when actors have a GPU, fused on CPUs.
    stages: Literal["auto", "split", "fused"] = "auto"
    # 0: auto (fused: one single-threaded actor per CPU of the cluster; split: one per GPU, else one).
    actors: int = Field(0, ge=0)
    min_actors: int = Field(1, ge=1)
    # Batches a predictor actor may have queued: > 1 keeps it busy while the next block is fetched.
    tasks_in_flight_per_actor: int = Field(2, ge=1)
    # Items per decode task (one Ray Data block), in predictor batches.
    block_batches: int = Field(2, ge=1)
    cpus_per_actor: float = Field(0.5, gt=0)
    gpus_per_actor: float = Field(0.0, ge=0)
    # CPU tasks on either side of the actors: decode + preprocess, and shape
    # features + overlays.
    cpus_per_task: float = Field(0.5, gt=0)
    task_memory_mib: int = Field(256, ge=1)  # per CPU task: a big frame decodes into a few hundred MiB
    threads: int = Field(0, ge=0)  # torch threads per actor; 0: the node's cores / actors
    device: str = "auto"
    precision: Literal["fp32", "bf16"] = "fp32"
    # Where JPEGs scored whole (preset field: none) are decoded: in the CPU tasks, or by the
    # predictor actor on its device (nvjpeg on a GPU); auto: the actor when it has a GPU.
    decode_on: Literal["auto", "cpu", "actor"] = "auto"
    cam_size: int = Field(56, ge=8, le=512)
    # Overlays cost about as much as the model: all rows, only rows labelled malignant
    # (error rows have no map), or none; bounded in size and lossy by default.
    overlays: Literal["all", "errors_and_positives", "none"] = "all"
    overlay_format: Literal["jpeg", "png", "webp"] = "jpeg"
    overlay_quality: int = Field(85, ge=1, le=100)
    overlay_max_side: int = Field(256, ge=16)
    # Files with these extensions get a `skipped` row instead of an error row. A file
    # without an extension is never skipped on that account (DICOM files often have none).
    skip_extensions: list[str] = Field(default_factory=lambda: list(SIDE_FILE_EXTENSIONS))
    # Row ids and overlay names are hashes of the input URI (paths can carry
    # names); a secret salt also stops guessing them from a known path.
    hash_salt: str = ""
    # Paths can carry patient names: with redact_paths the rows keep only the
    # salted hashes, and the hash -> path map goes to path_map_uri (Parquet), a
    # place the user names and guards apart from the results.
    redact_paths: bool = False
    path_map_uri: Optional[str] = None

    @field_validator("overlays", mode="before")
    @classmethod
    def _overlays_bool(cls, v):
        # Configs and saved runs from before the modes said true / false.
        return {True: "all", False: "none"}.get(v, v) if isinstance(v, bool) else v

    @model_validator(mode="after")
    def _path_map_needed(self):
        if self.redact_paths and not self.path_map_uri:
            raise ValueError("score.redact_paths is on but score.path_map_uri is not set: name where the "
                             "row_id -> input_uri map goes (kept apart from the results)")
        return self


class StorageConfig(_Section):
    # S3-compatible endpoint for every s3:// URI (MinIO, Ceph, moto, ...);
    # null uses AWS. Credentials always come from the environment.
    endpoint_url: Optional[str] = None
    region: Optional[str] = None


class Config(_Section):
    data: DataConfig = Field(default_factory=DataConfig)
    preprocess: PreprocessConfig = Field(default_factory=PreprocessConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    split: SplitConfig = Field(default_factory=SplitConfig)
    eval: EvalConfig = Field(default_factory=EvalConfig)
    cam: CamConfig = Field(default_factory=CamConfig)
    experiment: ExperimentConfig = Field(default_factory=ExperimentConfig)
    ray: RayConfig = Field(default_factory=RayConfig)
    tune: SearchConfig = Field(default_factory=SearchConfig)
    score: ScoreConfig = Field(default_factory=ScoreConfig)
    pretrain: PretrainConfig = Field(default_factory=PretrainConfig)
    storage: StorageConfig = Field(default_factory=StorageConfig)
    # Free text carried into the model card and reports.
    name: str = "thyro"


def _format_errors(err: ValidationError, source: str) -> str:
    lines = [f"invalid config in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key")
        else:
            got = e.get("input")
            lines.append(f"  {key}: {e['msg']} (got {got!r})")
    return "\n".join(lines)


def _deep_merge(base: dict, extra: dict) -> dict:
    out = dict(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def parse_override(text: str) -> dict:
    """`train.lr=3e-4` -> {"train": {"lr": 0.0003}} (value parsed as YAML)."""
    if "=" not in text:
        raise ConfigError(f"override {text!r}: expected key.path=value")
    key, raw = text.split("=", 1)
    value = yaml_load(raw) if raw != "" else None
    node: dict = {}
    cur = node
    parts = key.strip().split(".")
    for p in parts[:-1]:
        cur[p] = {}
        cur = cur[p]
    cur[parts[-1]] = value
    return node


def _read_yaml(path: str | Path) -> dict:
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file not found: {p}")
    try:
        data = yaml_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{p}: top level must be a mapping, got {type(data).__name__}")
    return data


def load_config(path: str | Path | None = None, overrides: list[dict] | None = None,
                model: type[BaseModel] = Config) -> Any:
    """Load `path` (or defaults), apply override dicts in order, validate."""
    data = _read_yaml(path) if path else {}
    for o in overrides or []:
        data = _deep_merge(data, o)
    source = str(path) if path else "<defaults>"
    if overrides:
        source += " + command-line overrides"
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, source)) from None


def config_to_dict(cfg: BaseModel) -> dict:
    return cfg.model_dump(mode="json")


def config_to_yaml(cfg: BaseModel) -> str:
    return yaml.safe_dump(config_to_dict(cfg), sort_keys=False)
