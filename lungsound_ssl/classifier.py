"""The fine-tuned multi-label classifier: an ``AudioEncoder`` and a linear head, as a transformers model.

``LungSoundClassifier`` is a ``PreTrainedModel``: ``save_pretrained`` writes
one folder with ``config.json`` (label names, ``problem_type``, the encoder
and backbone configurations, the tuned decision thresholds) and the weights,
and ``LungSoundClassifier.from_pretrained`` restores it without any training
state. Logits are one per label in ``LABELS`` order; probabilities are their
sigmoids.

Shapes: B clips, S samples (16 kHz), D embedding size, L = 3 labels.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from lungsound_ssl.encoders import AudioEncoder, make_encoder_config
from lungsound_ssl.labels import LABELS


class LungSoundClassifierConfig(PretrainedConfig):
    """Configuration of ``LungSoundClassifier``.

    Args:
        encoder_config: ``EncoderConfig`` fields of the encoder and its front-end.
        backbone_config: ``to_dict()`` of the transformers backbone config (AST or wav2vec2).
        head_dropout: Dropout before the linear head.
        pos_weight: Positive-class weight per label for the BCE loss, or None.
        thresholds: Decision threshold per label, tuned on the inner validation split.
        threshold_criterion: What the thresholds maximise (``f1`` or ``youden``).
    """

    model_type = "lungsound_classifier"

    def __init__(
        self,
        encoder_config: dict | None = None,
        backbone_config: dict | None = None,
        head_dropout: float = 0.1,
        pos_weight: list[float] | None = None,
        thresholds: list[float] | None = None,
        threshold_criterion: str = "f1",
        **kwargs,
    ):
        kwargs.setdefault("id2label", dict(enumerate(LABELS)))
        kwargs.setdefault("label2id", {label: i for i, label in enumerate(LABELS)})
        kwargs.setdefault("problem_type", "multi_label_classification")
        super().__init__(**kwargs)
        self.encoder_config = encoder_config or {}
        self.backbone_config = backbone_config or {}
        self.head_dropout = head_dropout
        self.pos_weight = pos_weight
        self.thresholds = thresholds if thresholds is not None else [0.5] * len(LABELS)
        self.threshold_criterion = threshold_criterion


class LungSoundClassifier(PreTrainedModel):
    """Encoder, dropout and a linear layer giving one logit per label."""

    config_class = LungSoundClassifierConfig
    base_model_prefix = "encoder"
    main_input_name = "input_values"

    def __init__(self, config: LungSoundClassifierConfig):
        super().__init__(config)
        backbone_values = dict(config.backbone_config)
        backbone_config = AutoConfig.for_model(backbone_values.pop("model_type"), **backbone_values)
        backbone = AutoModel.from_config(backbone_config)
        encoder_config = make_encoder_config(dict(config.encoder_config, pretrained=None), "the classifier config")
        self.encoder = AudioEncoder(encoder_config, backbone)
        self.dropout = nn.Dropout(config.head_dropout)
        self.classifier = nn.Linear(self.encoder.hidden_size, len(config.id2label))
        self.post_init()

    def _init_weights(self, module):
        if module is getattr(self, "classifier", None):
            nn.init.normal_(module.weight, std=0.02)
            nn.init.zeros_(module.bias)

    @classmethod
    def from_pretrained(cls, *args, **kwargs) -> LungSoundClassifier:
        """Load a saved classifier (see ``PreTrainedModel.from_pretrained``)."""
        model = super().from_pretrained(*args, **kwargs)
        # transformers 5 creates the model on the meta device and fills only the saved tensors.
        # The front-end's mel filter bank and window are computed, not saved, so rebuild them.
        rebuilt = AudioEncoder(model.encoder.config, model.encoder.backbone)
        model.encoder.frontend = rebuilt.frontend.to(model.device)
        return model

    @classmethod
    def from_encoder(cls, encoder: AudioEncoder, **config_kwargs) -> LungSoundClassifier:
        """Wrap an encoder (pretrained or freshly built) with a new head; the encoder weights are copied."""
        encoder_values = dataclasses.replace(encoder.config, pretrained=None).to_dict()
        config = LungSoundClassifierConfig(
            encoder_config=encoder_values, backbone_config=encoder.backbone.config.to_dict(), **config_kwargs
        )
        model = cls(config)
        model.encoder.load_state_dict(encoder.state_dict())
        return model

    def forward(
        self,
        input_values: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **kwargs,
    ) -> SequenceClassifierOutput:
        """Score crops: input_values (B, S) 16 kHz -> logits (B, L); BCE loss when ``labels`` (B, L) are given."""
        pooled = self.encoder(input_values, attention_mask).pooled  # (B, D)
        logits = self.classifier(self.dropout(pooled))  # (B, L)
        loss = None
        if labels is not None:
            pos_weight = None
            if self.config.pos_weight is not None:
                pos_weight = torch.tensor(self.config.pos_weight, dtype=logits.dtype, device=logits.device)
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype), pos_weight=pos_weight)
        return SequenceClassifierOutput(loss=loss, logits=logits)


AutoConfig.register(LungSoundClassifierConfig.model_type, LungSoundClassifierConfig)
AutoModel.register(LungSoundClassifierConfig, LungSoundClassifier)
