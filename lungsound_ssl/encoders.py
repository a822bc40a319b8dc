"""Audio encoders: a feature front-end followed by a transformers AST or wav2vec2 model.

Shapes: B batch, S samples (16 kHz), T frames, F mel bins, N tokens,
D hidden size.

Every encoder maps a waveform batch (B, S) and an optional 0/1 sample mask
(B, S) to a clip embedding (B, D), token embeddings (B, N, D) and a token
mask (B, N):

- ``ast``: ``LogMelFrontend`` (B, S) -> (B, T, F), then ``ASTModel``. Tokens
  are the F' x T' spectrogram patches in the model's order, frequency-major
  (token ``i * T' + j`` is frequency patch ``i``, time patch ``j``), without
  the CLS and distillation tokens.
- ``wav2vec2``: ``WaveformNormalizer`` (B, S) -> (B, S), then
  ``Wav2Vec2Model``. Tokens are the 20 ms frames of the transformer output.

``build_encoder(config)`` builds one from scratch or from pretrained weights.
``AudioEncoder.from_pretrained`` also loads plain transformers AST and
wav2vec2 checkpoints, from local directories or Hub ids. For AST it
interpolates the time axis of the position embeddings when the clip length
differs from the checkpoint's.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import is_offline_mode
from huggingface_hub.errors import HFValidationError
from torch import nn
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTModel,
    PreTrainedModel,
    Wav2Vec2Config,
    Wav2Vec2FeatureExtractor,
    Wav2Vec2Model,
)
from transformers.utils import ModelOutput, cached_file

from lungsound_ssl import __version__
from lungsound_ssl.config import load_yaml_config
from lungsound_ssl.cropping import EVAL_CROP_MODES, PAD_MODES, SAMPLE_RATE_HZ, seconds_to_samples
from lungsound_ssl.features import (
    AUDIOSET_MEAN,
    AUDIOSET_STD,
    LogMelFrontend,
    WaveformNormalizer,
    frames_for_samples,
)

logger = logging.getLogger(__name__)

ENCODER_CONFIG_NAME = "lungsound_encoder.json"
"""File that ``AudioEncoder.save_pretrained`` writes beside the transformers model."""

# NOTE: presets are read from the source tree, so only a clone or an editable
# install finds them by name. A wheel install has to pass a YAML path instead.
PRESET_DIR = Path(__file__).resolve().parents[1] / "configs" / "encoders"

ARCHITECTURES = ("ast", "wav2vec2")
TRAIN_CROP_MODES = ("random", "center")
POOLING_MODES = ("mean", "cls")
_MODEL_TYPES = {"audio-spectrogram-transformer": "ast", "wav2vec2": "wav2vec2"}

# Fields that describe the transformer's shape. With ``pretrained`` set they
# are read from the checkpoint and overwrite the values in the config.
_AST_SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "patch_size",
    "frequency_stride",
    "time_stride",
)
_WAV2VEC2_SHAPE_FIELDS = (
    "hidden_size",
    "num_hidden_layers",
    "num_attention_heads",
    "intermediate_size",
    "conv_dim",
    "conv_stride",
    "conv_kernel",
    "num_conv_pos_embeddings",
    "num_conv_pos_embedding_groups",
)


@dataclass
class EncoderConfig:
    """Options of an encoder and its front-end. The defaults build a tiny AST."""

    architecture: str = field(
        default="ast",
        metadata={"help": "Encoder type: 'ast' (log-mel patches) or 'wav2vec2' (raw waveform)."},
    )
    pretrained: str | None = field(
        default=None,
        metadata={
            "help": "Hub id or local directory of a transformers AST or wav2vec2 checkpoint, or of a saved "
            "AudioEncoder, to initialise from. Null trains from scratch. With a checkpoint, the transformer "
            "shape options below are read from it."
        },
    )

    # Crops.
    clip_seconds: float = field(
        default=2.0, metadata={"help": "Crop length in seconds that the encoder takes."}
    )
    pad_mode: str = field(
        default="repeat",
        metadata={
            "help": "How clips shorter than the crop are filled: 'repeat' (tiled with a cross-fade) or 'zero' (zeros, masked)."
        },
    )
    fade_ms: float = field(
        default=10.0,
        metadata={"help": "Cross-fade length in ms between repeated copies of a short clip."},
    )
    train_crop: str = field(
        default="random", metadata={"help": "Crop of long clips in training: 'random' or 'center'."}
    )
    eval_crop: str = field(
        default="center",
        metadata={
            "help": "Crop of long clips at evaluation: 'center', or 'sliding' windows whose outputs are averaged."
        },
    )
    eval_hop_seconds: float = field(
        default=1.0, metadata={"help": "Hop between sliding evaluation windows in seconds."}
    )
    pooling: str = field(
        default="mean",
        metadata={
            "help": "Clip embedding: 'mean' of the unmasked tokens, or 'cls' (AST only: mean of CLS and distillation tokens)."
        },
    )

    # Transformer shape (both architectures).
    hidden_size: int = field(default=192, metadata={"help": "Transformer hidden size D."})
    num_hidden_layers: int = field(default=4, metadata={"help": "Number of transformer layers."})
    num_attention_heads: int = field(
        default=3, metadata={"help": "Attention heads per layer; must divide hidden_size."}
    )
    intermediate_size: int = field(
        default=768, metadata={"help": "Hidden size of the feed-forward block."}
    )

    # Regularisation, applied to pretrained checkpoints as well.
    hidden_dropout_prob: float = field(
        default=0.0, metadata={"help": "Dropout probability on hidden states."}
    )
    attention_dropout_prob: float = field(
        default=0.0, metadata={"help": "Dropout probability on attention weights."}
    )
    layerdrop: float = field(
        default=0.0,
        metadata={"help": "wav2vec2 only: probability of skipping a whole layer in training."},
    )
    mask_time_prob: float = field(
        default=0.05,
        metadata={
            "help": "wav2vec2 only: fraction of frames masked by its built-in time masking in training (0 disables it)."
        },
    )

    # AST log-mel front-end.
    num_mel_bins: int = field(
        default=64, metadata={"help": "AST only: mel bins F of the log-mel front-end."}
    )
    frame_length_ms: float = field(
        default=25.0, metadata={"help": "AST only: STFT window length in ms."}
    )
    frame_shift_ms: float = field(
        default=10.0, metadata={"help": "AST only: hop between frames in ms."}
    )
    min_frequency_hz: float = field(
        default=20.0, metadata={"help": "AST only: lower edge of the lowest mel filter in Hz."}
    )
    max_frequency_hz: float = field(
        default=8000.0, metadata={"help": "AST only: upper edge of the highest mel filter in Hz."}
    )
    window_name: str = field(
        default="hann",
        metadata={
            "help": "AST only: STFT window ('hann' as in ASTFeatureExtractor, or 'povey', 'hamming')."
        },
    )
    norm_mean: float = field(
        default=AUDIOSET_MEAN,
        metadata={"help": "AST only: log-mel mean for normalisation (AudioSet by default)."},
    )
    norm_std: float = field(
        default=AUDIOSET_STD,
        metadata={"help": "AST only: log-mel std for normalisation (AudioSet by default)."},
    )

    # AST patches.
    patch_size: int = field(
        default=16, metadata={"help": "AST only: square patch side in frames and mel bins."}
    )
    frequency_stride: int = field(
        default=10, metadata={"help": "AST only: patch stride along mel bins."}
    )
    time_stride: int = field(default=10, metadata={"help": "AST only: patch stride along frames."})

    # wav2vec2 convolutional feature encoder and positional convolution.
    conv_dim: list[int] = field(
        default_factory=lambda: [64, 64, 64, 64, 64, 64, 64],
        metadata={"help": "wav2vec2 only: channels of each feature-encoder convolution."},
    )
    conv_stride: list[int] = field(
        default_factory=lambda: [5, 2, 2, 2, 2, 2, 2],
        metadata={
            "help": "wav2vec2 only: stride of each convolution (product 320 gives 20 ms tokens)."
        },
    )
    conv_kernel: list[int] = field(
        default_factory=lambda: [10, 3, 3, 3, 3, 2, 2],
        metadata={"help": "wav2vec2 only: kernel size of each convolution."},
    )
    num_conv_pos_embeddings: int = field(
        default=32, metadata={"help": "wav2vec2 only: kernel size of the positional convolution."}
    )
    num_conv_pos_embedding_groups: int = field(
        default=16, metadata={"help": "wav2vec2 only: groups of the positional convolution."}
    )

    def __post_init__(self) -> None:
        _check_choice("architecture", self.architecture, ARCHITECTURES)
        _check_choice("pad_mode", self.pad_mode, PAD_MODES)
        _check_choice("train_crop", self.train_crop, TRAIN_CROP_MODES)
        _check_choice("eval_crop", self.eval_crop, EVAL_CROP_MODES)
        _check_choice("pooling", self.pooling, POOLING_MODES)
        for name in (
            "clip_seconds",
            "eval_hop_seconds",
            "norm_std",
            "hidden_size",
            "num_hidden_layers",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.fade_ms < 0:
            raise ValueError(f"fade_ms must be zero or positive, got {self.fade_ms}")
        if self.pooling == "cls" and self.architecture != "ast":
            raise ValueError(
                "pooling 'cls' needs architecture 'ast' (wav2vec2 has no CLS token); use pooling 'mean'"
            )
        if not len(self.conv_dim) == len(self.conv_stride) == len(self.conv_kernel):
            raise ValueError(
                f"conv_dim, conv_stride and conv_kernel must have the same length, got "
                f"{len(self.conv_dim)}, {len(self.conv_stride)} and {len(self.conv_kernel)}"
            )
        if self.architecture == "ast" and self.pretrained is None:
            if self.num_frames < self.patch_size:
                raise ValueError(
                    f"clip_seconds {self.clip_seconds} gives {self.num_frames} frames, fewer than the AST patch size "
                    f"{self.patch_size}; use a longer clip_seconds"
                )
            if self.num_mel_bins < self.patch_size:
                raise ValueError(
                    f"num_mel_bins {self.num_mel_bins} is smaller than the AST patch size {self.patch_size}"
                )

    @property
    def clip_samples(self) -> int:
        """Crop length in samples at 16 kHz."""
        return seconds_to_samples(self.clip_seconds)

    @property
    def fade_samples(self) -> int:
        """Cross-fade length in samples at 16 kHz."""
        return seconds_to_samples(self.fade_ms / 1000)

    @property
    def eval_hop_samples(self) -> int:
        """Hop between sliding evaluation windows in samples at 16 kHz."""
        return seconds_to_samples(self.eval_hop_seconds)

    @property
    def frame_length(self) -> int:
        """STFT window length in samples."""
        return seconds_to_samples(self.frame_length_ms / 1000)

    @property
    def hop_length(self) -> int:
        """Hop between STFT frames in samples."""
        return seconds_to_samples(self.frame_shift_ms / 1000)

    @property
    def num_frames(self) -> int:
        """Log-mel frames of one crop, the AST's ``max_length``."""
        return frames_for_samples(self.clip_samples, self.frame_length, self.hop_length)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {', '.join(choices)}; got {value!r}")


def make_encoder_config(values: dict[str, Any], source: str = "the given options") -> EncoderConfig:
    """Build an ``EncoderConfig`` from a mapping, rejecting unknown keys with a ValueError naming ``source``."""
    known = {f.name for f in dataclasses.fields(EncoderConfig)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(
            f"unknown encoder option(s) {', '.join(unknown)} in {source}; valid options: {', '.join(sorted(known))}"
        )
    return EncoderConfig(**values)


def list_encoder_presets() -> list[str]:
    """Return the names of the presets in ``configs/encoders``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_encoder_config(name_or_yaml: str | os.PathLike, **overrides: Any) -> EncoderConfig:
    """Load an encoder config from a preset name (``"ast-tiny"``) or a YAML file, then apply overrides.

    Raises:
        ValueError: for an unknown preset name or an unknown option.
        FileNotFoundError: for a YAML path that does not exist.
    """
    path = Path(name_or_yaml)
    if path.suffix in (".yaml", ".yml") or path.is_file():
        values = load_yaml_config(path)
        source = str(path)
    else:
        preset = PRESET_DIR / f"{name_or_yaml}.yaml"
        if not preset.is_file():
            raise ValueError(
                f"unknown encoder preset {str(name_or_yaml)!r}; choose one of {', '.join(list_encoder_presets())} "
                "or pass the path of a YAML file"
            )
        values = load_yaml_config(preset)
        source = str(preset)
    values.update(overrides)
    return make_encoder_config(values, source)


@dataclass
class EncoderOutput(ModelOutput):
    """Output of ``AudioEncoder.forward``.

    Attributes:
        pooled: Clip embeddings, (B, D).
        tokens: Token embeddings, (B, N, D).
        token_mask: 1 for tokens computed from clip content, 0 for padding, (B, N).
    """

    pooled: torch.Tensor | None = None
    tokens: torch.Tensor | None = None
    token_mask: torch.Tensor | None = None


FeatureTransform = Callable[[torch.Tensor], torch.Tensor]


class AudioEncoder(nn.Module):
    """A feature front-end (``self.frontend``) and a transformers backbone (``self.backbone``).

    Build one with ``build_encoder(config)`` or ``AudioEncoder.from_pretrained``.
    ``self.feature_transform`` (default None) is a hook, for example
    SpecAugment, that ``forward`` applies between the front-end and the
    backbone; a ``feature_transform`` argument to ``forward`` takes precedence.
    The hook runs whenever it is set, so it should check ``self.training``
    itself if it must not run at evaluation.
    """

    def __init__(self, config: EncoderConfig, backbone: PreTrainedModel) -> None:
        super().__init__()
        self.config = config
        self.backbone = backbone
        self.feature_transform: FeatureTransform | None = None
        if config.architecture == "ast":
            self.frontend: nn.Module = LogMelFrontend(
                num_frames=backbone.config.max_length,
                num_mel_bins=config.num_mel_bins,
                frame_length_ms=config.frame_length_ms,
                frame_shift_ms=config.frame_shift_ms,
                mean=config.norm_mean,
                std=config.norm_std,
                min_frequency_hz=config.min_frequency_hz,
                max_frequency_hz=config.max_frequency_hz,
                window_name=config.window_name,
            )
            # Minimum number of valid samples that gives one frame, so every clip has a valid token.
            self._min_valid_samples = self.frontend.frame_length
        else:
            self.frontend = WaveformNormalizer()
            self._min_valid_samples = _conv_receptive_field(
                backbone.config.conv_kernel, backbone.config.conv_stride
            )

    @property
    def hidden_size(self) -> int:
        """Embedding size D of ``pooled`` and ``tokens``."""
        return self.backbone.config.hidden_size

    def gradient_checkpointing_enable(self, **kwargs: Any) -> None:
        """Enable gradient checkpointing in the backbone (see ``PreTrainedModel.gradient_checkpointing_enable``)."""
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def set_normalization_stats(self, mean: float, std: float) -> None:
        """Replace the AST log-mel normalisation statistics; they are saved with the model.

        Compute them with ``lungsound_ssl.features.compute_normalization_stats``.
        """
        if self.config.architecture != "ast":
            raise ValueError(
                "normalisation statistics apply to the AST log-mel front-end only; wav2vec2 normalises each clip"
            )
        self.frontend.set_normalization(mean, std)
        self.config.norm_mean = float(mean)
        self.config.norm_std = float(std)

    def forward(
        self,
        input_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        *,
        features: torch.Tensor | None = None,
        feature_mask: torch.Tensor | None = None,
        feature_transform: FeatureTransform | None = None,
    ) -> EncoderOutput:
        """Encode a batch of crops.

        Args:
            input_values: 16 kHz waveforms, (B, S) float, normally crops of
                ``config.clip_samples`` samples from ``lungsound_ssl.cropping``.
            attention_mask: 0/1 per sample, (B, S), with the valid samples
                first (as zero padding produces). None means all valid.
            features: Front-end output computed beforehand, used in place of
                ``input_values``: AST (B, T, F) normalised log-mel, wav2vec2
                (B, S) normalised waveform.
            feature_mask: Mask of ``features``: AST (B, T) frames, wav2vec2
                (B, S) samples. None means all valid.
            feature_transform: Callable applied to the front-end output
                (same shape in and out) before the backbone; overrides
                ``self.feature_transform``.

        Returns:
            ``EncoderOutput`` with ``pooled`` (B, D), ``tokens`` (B, N, D)
            and ``token_mask`` (B, N).
        """
        if features is None:
            if input_values is None:
                raise ValueError("pass input_values (waveforms) or features (front-end output)")
            if attention_mask is not None:
                attention_mask = _ensure_min_valid(attention_mask, self._min_valid_samples)
            features, feature_mask = self.frontend(input_values, attention_mask)
        elif feature_mask is None:
            feature_mask = torch.ones(features.shape[:2], dtype=torch.long, device=features.device)

        transform = feature_transform if feature_transform is not None else self.feature_transform
        if transform is not None:
            features = transform(features)

        features = features.to(self.backbone.dtype)
        if self.config.architecture == "ast":
            return self._forward_ast(features, feature_mask)
        return self._forward_wav2vec2(features, feature_mask)

    def _forward_ast(self, features: torch.Tensor, frame_mask: torch.Tensor) -> EncoderOutput:
        config = self.backbone.config
        expected = (config.max_length, config.num_mel_bins)
        if tuple(features.shape[1:]) != expected:
            raise ValueError(
                f"AST features must have shape (batch, {expected[0]}, {expected[1]}), got {tuple(features.shape)}"
            )
        frequency_patches, time_patches = self.backbone.embeddings.get_shape(config)
        batch_size = features.shape[0]

        # A time patch counts as valid when its first frame is valid.
        time_valid = frame_mask[:, :: config.time_stride][:, :time_patches].to(torch.long).clone()
        time_valid[:, 0] = (
            1  # keeps one valid token per clip so that attention and mean pooling stay finite
        )
        # (B, T') -> (B, F', T') -> (B, F' * T'), frequency-major like the patch embedding's flatten.
        token_mask = (
            time_valid[:, None, :]
            .expand(batch_size, frequency_patches, time_patches)
            .reshape(batch_size, -1)
        )

        backbone_mask = None
        if not bool(token_mask.all()):
            special = torch.ones(
                batch_size, 2, dtype=torch.long, device=token_mask.device
            )  # CLS, distillation
            backbone_mask = torch.cat([special, token_mask], dim=1)
        hidden = self.backbone(
            input_values=features, attention_mask=backbone_mask
        ).last_hidden_state

        tokens = hidden[:, 2:]
        if self.config.pooling == "cls":
            pooled = (hidden[:, 0] + hidden[:, 1]) / 2  # ASTModel's own pooler output
        else:
            pooled = _masked_mean(tokens, token_mask)
        return EncoderOutput(pooled=pooled, tokens=tokens, token_mask=token_mask)

    def _forward_wav2vec2(self, waveform: torch.Tensor, sample_mask: torch.Tensor) -> EncoderOutput:
        config = self.backbone.config
        # Checkpoints with group norm in the feature encoder (wav2vec2-base) were
        # trained on zero-padded batches without a mask, and the documentation of
        # Wav2Vec2FeatureExtractor (transformers 5.x) advises against passing one.
        # For them the mask is used for pooling only.
        pass_mask = config.feat_extract_norm == "layer" and not bool(sample_mask.all())
        output = self.backbone(waveform, attention_mask=sample_mask if pass_mask else None)
        tokens = output.last_hidden_state

        lengths = _conv_output_lengths(
            sample_mask.to(torch.long).sum(dim=-1), config.conv_kernel, config.conv_stride
        )
        positions = torch.arange(tokens.shape[1], device=tokens.device)
        token_mask = (positions[None, :] < lengths.clamp(min=1)[:, None]).to(torch.long)
        return EncoderOutput(
            pooled=_masked_mean(tokens, token_mask), tokens=tokens, token_mask=token_mask
        )

    def save_pretrained(self, save_directory: str | os.PathLike) -> None:
        """Save the backbone (transformers format), the encoder config and a feature-extractor config.

        The directory loads with ``AudioEncoder.from_pretrained``; its
        ``config.json`` and weights also load with ``ASTModel`` or
        ``Wav2Vec2Model`` alone.
        """
        directory = Path(save_directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.backbone.save_pretrained(directory)

        config = dataclasses.replace(self.config, pretrained=None)
        payload = {
            "encoder_config": config.to_dict(),
            "initialized_from": self.config.pretrained,
            "lungsound_ssl_version": __version__,
        }
        (directory / ENCODER_CONFIG_NAME).write_text(json.dumps(payload, indent=2) + "\n")

        extractor = self._feature_extractor()
        if extractor is not None:
            extractor.save_pretrained(directory)
        logger.info("saved %s encoder to %s", self.config.architecture, directory)

    def _feature_extractor(self):
        """Return the transformers feature extractor equal to the front-end, or None if there is none."""
        config = self.config
        if config.architecture == "wav2vec2":
            return Wav2Vec2FeatureExtractor(
                feature_size=1,
                sampling_rate=SAMPLE_RATE_HZ,
                padding_value=0.0,
                do_normalize=True,
                return_attention_mask=self.backbone.config.feat_extract_norm == "layer",
            )
        # ASTFeatureExtractor hard-codes these front-end settings.
        matches_extractor = (
            config.frame_length_ms == 25.0
            and config.frame_shift_ms == 10.0
            and config.window_name == "hann"
            and config.min_frequency_hz == 20.0
            and config.max_frequency_hz == SAMPLE_RATE_HZ / 2
        )
        if not matches_extractor:
            logger.info(
                "front-end settings differ from ASTFeatureExtractor's; not writing preprocessor_config.json"
            )
            return None
        return ASTFeatureExtractor(
            sampling_rate=SAMPLE_RATE_HZ,
            num_mel_bins=config.num_mel_bins,
            max_length=self.backbone.config.max_length,
            mean=config.norm_mean,
            std=config.norm_std,
        )

    @classmethod
    def from_pretrained(cls, name_or_path: str | os.PathLike, **overrides: Any) -> AudioEncoder:
        """Load a saved encoder, or a plain transformers AST or wav2vec2 checkpoint.

        ``name_or_path`` is a local directory or a Hugging Face Hub id. A
        directory written by ``save_pretrained`` restores the full encoder
        config. For a plain checkpoint the transformer shape, and for AST the
        mel bins, clip length (the checkpoint's ``max_length``) and
        normalisation statistics (from ``preprocessor_config.json``), come
        from the checkpoint, and AST pooling defaults to ``"cls"``, the
        pooling AST checkpoints were fine-tuned with. ``overrides`` are
        ``EncoderConfig`` fields applied on top, for example
        ``clip_seconds=2.0`` (AST position embeddings are then interpolated).

        Raises:
            FileNotFoundError: if the directory does not exist, or the Hub id
                cannot be resolved (not cached in offline mode, or not found).
            ValueError: for a checkpoint of another model type or an unknown override.
        """
        source = str(name_or_path)
        saved_file = _resolve_file(source, ENCODER_CONFIG_NAME)
        if saved_file is not None:
            saved = json.loads(Path(saved_file).read_text())
            values = dict(saved["encoder_config"])
            values.update(overrides)
            values["pretrained"] = source
            return build_encoder(make_encoder_config(values, f"{source}/{ENCODER_CONFIG_NAME}"))

        config_file = _resolve_file(source, "config.json")
        if config_file is None:
            raise FileNotFoundError(_not_found_message(source))
        model_config = json.loads(Path(config_file).read_text())
        model_type = model_config.get("model_type")
        if model_type not in _MODEL_TYPES:
            raise ValueError(
                f"{source} contains a {model_type!r} model, but AudioEncoder loads "
                f"{' or '.join(_MODEL_TYPES)} checkpoints only"
            )

        values: dict[str, Any] = {"architecture": _MODEL_TYPES[model_type]}
        shape_fields = (
            _AST_SHAPE_FIELDS if values["architecture"] == "ast" else _WAV2VEC2_SHAPE_FIELDS
        )
        values.update({name: model_config[name] for name in shape_fields if name in model_config})
        if values["architecture"] == "ast":
            values.update(_ast_checkpoint_defaults(source, model_config))
        values.update(overrides)
        values["pretrained"] = source
        return build_encoder(make_encoder_config(values, f"the overrides for {source}"))


def _ast_checkpoint_defaults(source: str, model_config: dict[str, Any]) -> dict[str, Any]:
    """Read the front-end options of a plain AST checkpoint: mel bins, clip length, statistics."""
    num_mel_bins = model_config.get("num_mel_bins", 128)
    max_length = model_config.get("max_length", 1024)
    # The shortest clip that yields max_length frames with the default 25 ms window and 10 ms hop.
    defaults = EncoderConfig()
    clip_samples = (max_length - 1) * defaults.hop_length + defaults.frame_length
    values: dict[str, Any] = {
        "num_mel_bins": num_mel_bins,
        "clip_seconds": clip_samples / SAMPLE_RATE_HZ,
        "pooling": "cls",
    }
    preprocessor_file = _resolve_file(source, "preprocessor_config.json")
    if preprocessor_file is not None:
        preprocessor = json.loads(Path(preprocessor_file).read_text())
        if "mean" in preprocessor and "std" in preprocessor:
            values["norm_mean"] = float(preprocessor["mean"])
            values["norm_std"] = float(preprocessor["std"])
    return values


def _looks_like_path(source: str) -> bool:
    # A Hub id is "name" or "owner/name"; anything else is meant as a directory.
    return (
        source.startswith((".", "/", "~"))
        or source.count("/") > 1
        or (os.sep != "/" and os.sep in source)
    )


def _resolve_file(source: str, filename: str) -> str | None:
    """Return the local path of ``filename`` in a directory or Hub repository, or None if it has none."""
    path = Path(source).expanduser()
    if path.is_dir():
        candidate = path / filename
        return str(candidate) if candidate.is_file() else None
    if _looks_like_path(source):
        raise FileNotFoundError(
            f"encoder directory not found: {source}; pass an existing directory or a Hub id"
        )
    try:
        return cached_file(
            source,
            filename,
            _raise_exceptions_for_missing_entries=False,
            _raise_exceptions_for_connection_errors=False,
        )
    except (OSError, HFValidationError) as error:
        raise FileNotFoundError(f"{_not_found_message(source)} ({error})") from error


def _not_found_message(source: str) -> str:
    message = f"could not load an encoder from {source!r}: it is not a local directory, and "
    if is_offline_mode():
        return message + (
            "the Hub id is not in the local cache while offline mode is on (HF_HUB_OFFLINE=1). "
            "Download it once with network access, or pass a local directory."
        )
    return (
        message
        + "no such model was found on the Hugging Face Hub. Check the id or pass a local directory."
    )


def _check_pretrained_matches(
    config: EncoderConfig, fields: tuple[str, ...], backbone_config: Any
) -> EncoderConfig:
    """Copy the checkpoint's shape into the config, warning about values that differ."""
    differing = {}
    updates = {}
    for name in fields:
        value = getattr(backbone_config, name)
        value = list(value) if isinstance(value, tuple) else value
        if getattr(config, name) != value:
            differing[name] = (getattr(config, name), value)
        updates[name] = value
    if differing:
        changes = ", ".join(f"{name} {old} -> {new}" for name, (old, new) in differing.items())
        logger.warning(
            "using the transformer shape of %s, not the config's: %s", config.pretrained, changes
        )
    return dataclasses.replace(config, **updates)


def _ast_backbone_config(config: EncoderConfig) -> ASTConfig:
    return ASTConfig(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout_prob=config.hidden_dropout_prob,
        attention_probs_dropout_prob=config.attention_dropout_prob,
        patch_size=config.patch_size,
        frequency_stride=config.frequency_stride,
        time_stride=config.time_stride,
        max_length=config.num_frames,
        num_mel_bins=config.num_mel_bins,
    )


def _wav2vec2_backbone_config(config: EncoderConfig) -> Wav2Vec2Config:
    return Wav2Vec2Config(
        hidden_size=config.hidden_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=config.intermediate_size,
        hidden_dropout=config.hidden_dropout_prob,
        activation_dropout=config.hidden_dropout_prob,
        feat_proj_dropout=config.hidden_dropout_prob,
        attention_dropout=config.attention_dropout_prob,
        layerdrop=config.layerdrop,
        mask_time_prob=config.mask_time_prob,
        conv_dim=list(config.conv_dim),
        conv_stride=list(config.conv_stride),
        conv_kernel=list(config.conv_kernel),
        num_conv_pos_embeddings=config.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=config.num_conv_pos_embedding_groups,
        # Layer norm in the feature encoder makes padded batches with an
        # attention mask exact; group norm would mix padding into the statistics.
        feat_extract_norm="layer",
        do_stable_layer_norm=True,
    )


def interpolate_time_position_embeddings(
    position_embeddings: torch.Tensor, frequency_patches: int, time_patches: int
) -> torch.Tensor:
    """Resample the time axis of AST position embeddings to ``time_patches`` patches.

    The first two positions (CLS and distillation tokens) are kept. The rest
    form a frequency-major (F', T_old) grid. Each frequency row is resampled
    along time alone, by linear interpolation with aligned end points. So the
    frequency layout is unchanged, and the first and last time positions keep
    their embeddings.

    Shape: (1, 2 + F' * T_old, D) -> (1, 2 + F' * time_patches, D).
    """
    special, grid = position_embeddings[:, :2], position_embeddings[:, 2:]
    hidden_size = grid.shape[-1]
    if grid.shape[1] % frequency_patches != 0:
        raise ValueError(
            f"{grid.shape[1]} patch positions do not form a grid with {frequency_patches} frequency rows"
        )
    old_time_patches = grid.shape[1] // frequency_patches
    grid = grid.reshape(
        frequency_patches, old_time_patches, hidden_size
    )  # (1, F'*T, D) -> (F', T, D)
    grid = grid.transpose(1, 2)  # (F', D, T): interpolate treats F' as batch and D as channels
    grid = nn.functional.interpolate(grid, size=time_patches, mode="linear", align_corners=True)
    grid = grid.transpose(1, 2).reshape(
        1, frequency_patches * time_patches, hidden_size
    )  # (F', T_new, D) -> (1, F'*T_new, D)
    return torch.cat([special, grid], dim=1)


def _load_ast_backbone(config: EncoderConfig) -> tuple[ASTModel, EncoderConfig]:
    source = config.pretrained
    checkpoint_config = ASTConfig.from_pretrained(source)
    if checkpoint_config.num_mel_bins != config.num_mel_bins:
        raise ValueError(
            f"{source} was trained on {checkpoint_config.num_mel_bins} mel bins but the config asks for "
            f"{config.num_mel_bins}; set num_mel_bins: {checkpoint_config.num_mel_bins} (the ast-base preset uses 128)"
        )
    checkpoint_config.hidden_dropout_prob = config.hidden_dropout_prob
    checkpoint_config.attention_probs_dropout_prob = config.attention_dropout_prob
    model = ASTModel.from_pretrained(source, config=checkpoint_config, dtype=torch.float32)
    config = _check_pretrained_matches(config, _AST_SHAPE_FIELDS, checkpoint_config)
    if config.num_frames < config.patch_size:
        raise ValueError(
            f"clip_seconds {config.clip_seconds} gives fewer frames than the AST patch size {config.patch_size}"
        )

    frequency_patches, old_time_patches = model.embeddings.get_shape(checkpoint_config)
    target_config = ASTConfig.from_dict(
        {**checkpoint_config.to_dict(), "max_length": config.num_frames}
    )
    _, new_time_patches = model.embeddings.get_shape(target_config)
    if new_time_patches == old_time_patches:
        # Same patch grid (for example 1022 frames instead of 1024): only the frame count changes.
        model.config.max_length = config.num_frames
        return model, config

    logger.info(
        "interpolating the AST time position embeddings of %s from %d to %d patches (clip_seconds %s)",
        source,
        old_time_patches,
        new_time_patches,
        config.clip_seconds,
    )
    state = model.state_dict()
    state["embeddings.position_embeddings"] = interpolate_time_position_embeddings(
        state["embeddings.position_embeddings"], frequency_patches, new_time_patches
    )
    resized = ASTModel(target_config)
    resized.load_state_dict(state)
    return resized, config


def _load_wav2vec2_backbone(config: EncoderConfig) -> tuple[Wav2Vec2Model, EncoderConfig]:
    source = config.pretrained
    checkpoint_config = Wav2Vec2Config.from_pretrained(source)
    checkpoint_config.hidden_dropout = config.hidden_dropout_prob
    checkpoint_config.activation_dropout = config.hidden_dropout_prob
    checkpoint_config.feat_proj_dropout = config.hidden_dropout_prob
    checkpoint_config.attention_dropout = config.attention_dropout_prob
    checkpoint_config.layerdrop = config.layerdrop
    checkpoint_config.mask_time_prob = config.mask_time_prob
    model = Wav2Vec2Model.from_pretrained(source, config=checkpoint_config, dtype=torch.float32)
    if checkpoint_config.feat_extract_norm != "layer":
        logger.info(
            "%s uses group norm in its feature encoder: padded samples are not masked inside the model",
            source,
        )
    return model, _check_pretrained_matches(config, _WAV2VEC2_SHAPE_FIELDS, checkpoint_config)


def _init_ast_embeddings(backbone: ASTModel) -> None:
    """Draw the CLS, distillation and position embeddings of a new AST from N(0, 0.02^2), truncated.

    transformers 5.25 starts them at zero. With zero position embeddings every
    patch of a frequency row looks alike to the first layer, and the first
    gradient steps are large (norms of 1e3 to 1e4 before clipping). The 0.02
    scale is the usual ViT/DeiT initialisation.
    """
    embeddings = backbone.embeddings
    with torch.no_grad():
        for parameter in (embeddings.cls_token, embeddings.distillation_token, embeddings.position_embeddings):
            nn.init.trunc_normal_(parameter, std=0.02)


def build_encoder(config: EncoderConfig) -> AudioEncoder:
    """Build the encoder and front-end that ``config`` describes, from scratch or from ``config.pretrained``."""
    if config.pretrained is None:
        if config.architecture == "ast":
            backbone: PreTrainedModel = ASTModel(_ast_backbone_config(config))
            _init_ast_embeddings(backbone)
        else:
            backbone = Wav2Vec2Model(_wav2vec2_backbone_config(config))
        origin = "from scratch"
    else:
        if config.architecture == "ast":
            backbone, config = _load_ast_backbone(config)
        else:
            backbone, config = _load_wav2vec2_backbone(config)
        origin = f"from {config.pretrained}"

    encoder = AudioEncoder(config, backbone)
    num_parameters = sum(p.numel() for p in backbone.parameters())
    logger.info(
        "built %s encoder %s: hidden size %d, %d layers, %.1fM parameters, %.2f s crops",
        config.architecture,
        origin,
        config.hidden_size,
        config.num_hidden_layers,
        num_parameters / 1e6,
        config.clip_seconds,
    )
    return encoder


def _conv_output_lengths(
    lengths: torch.Tensor, kernels: list[int], strides: list[int]
) -> torch.Tensor:
    """Apply the output-length formula of unpadded 1-D convolutions (as ``Wav2Vec2Model`` computes it)."""
    for kernel, stride in zip(kernels, strides):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    return lengths


def _conv_receptive_field(kernels: list[int], strides: list[int]) -> int:
    """Return the fewest input samples that give one output frame of a convolution stack."""
    needed = 1
    for kernel, stride in zip(reversed(list(kernels)), reversed(list(strides))):
        needed = (needed - 1) * stride + kernel
    return needed


def _ensure_min_valid(attention_mask: torch.Tensor, min_samples: int) -> torch.Tensor:
    """Mark at least the first ``min_samples`` samples valid, so a clip shorter than one frame still has a token."""
    attention_mask = attention_mask.to(torch.long).clone()
    attention_mask[:, :min_samples] = 1
    return attention_mask


def _masked_mean(tokens: torch.Tensor, token_mask: torch.Tensor) -> torch.Tensor:
    weights = token_mask.to(tokens.dtype)[..., None]  # (B, N) -> (B, N, 1)
    return (tokens * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)
