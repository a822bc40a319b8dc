"""Tests of the encoder factory, the AST and wav2vec2 encoders, saving and checkpoint loading."""

from __future__ import annotations

import csv
import json

import huggingface_hub.constants
import numpy as np
import pytest
import soundfile as sf
import soxr
import torch
from transformers import (
    ASTConfig,
    ASTFeatureExtractor,
    ASTForAudioClassification,
    ASTModel,
    Wav2Vec2Config,
    Wav2Vec2Model,
)

from lungsound_ssl.cropping import crop_or_pad, crop_or_pad_batch
from lungsound_ssl.encoders import (
    AudioEncoder,
    build_encoder,
    interpolate_time_position_embeddings,
    list_encoder_presets,
    load_encoder_config,
)

pytestmark = pytest.mark.filterwarnings("ignore:At least one mel filter has all zero values")

# Duration ranges in seconds of the real clips used below: shorter than a 2 s
# crop (padded), about as long, and longer (cropped).
DURATION_RANGES_S = [(0.3, 1.0), (1.0, 1.9), (2.5, 5.0), (5.0, 9.0)]


@pytest.fixture(scope="module")
def mixed_clips(icbhi_cycles_dir) -> list[np.ndarray]:
    """Four real clips of different lengths, resampled to 16 kHz."""
    with open(icbhi_cycles_dir / "metadata.csv", newline="") as f:
        rows = sorted(csv.DictReader(f), key=lambda row: row["filename"])
    clips = []
    for low, high in DURATION_RANGES_S:
        row = next(r for r in rows if low <= float(r["duration_s"]) < high)
        audio, sample_rate = sf.read(icbhi_cycles_dir / "train" / row["filename"], dtype="float32")
        clips.append(soxr.resample(audio, sample_rate, 16000).astype(np.float32))
    return clips


def make_batch(clips, config, mode):
    waves, masks = crop_or_pad_batch(
        clips,
        config.clip_samples,
        mode=mode,
        rng=np.random.default_rng(0),
        fade_samples=config.fade_samples,
    )
    return torch.from_numpy(waves), torch.from_numpy(masks)


def build_tiny(architecture: str, **overrides) -> AudioEncoder:
    torch.manual_seed(0)
    return build_encoder(load_encoder_config(f"{architecture}-tiny", **overrides))


def tiny_ast_checkpoint(
    directory, max_length: int = 298, num_mel_bins: int = 32
) -> ASTForAudioClassification:
    """Save a small AST classifier with random position embeddings, as a Hub checkpoint would look."""
    torch.manual_seed(1)
    config = ASTConfig(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        num_mel_bins=num_mel_bins,
        max_length=max_length,
        num_labels=3,
    )
    model = ASTForAudioClassification(config)
    with torch.no_grad():
        # AST initialises position embeddings to zeros; random values make the interpolation visible.
        model.audio_spectrogram_transformer.embeddings.position_embeddings.normal_()
    model.save_pretrained(directory)
    ASTFeatureExtractor(
        num_mel_bins=num_mel_bins, max_length=max_length, mean=-6.0, std=3.0
    ).save_pretrained(directory)
    return model


def naive_time_interpolation(grid: np.ndarray, new_time: int) -> np.ndarray:
    """Interpolate a (F', T, D) grid along T with np.interp, end points aligned."""
    frequency, old_time, hidden = grid.shape
    old_positions = np.linspace(0.0, 1.0, old_time)
    new_positions = np.linspace(0.0, 1.0, new_time)
    out = np.empty((frequency, new_time, hidden))
    for f in range(frequency):
        for d in range(hidden):
            out[f, :, d] = np.interp(new_positions, old_positions, grid[f, :, d])
    return out


# Presets and configuration.


def test_presets_listed():
    assert {"ast-tiny", "ast-base", "wav2vec2-tiny"} <= set(list_encoder_presets())


def test_ast_tiny_preset_shape():
    config = load_encoder_config("ast-tiny")
    assert config.clip_samples == 32000
    assert config.num_frames == 198
    assert config.fade_samples == 160
    encoder = build_encoder(config)
    assert encoder.hidden_size == 192
    # 64 mel bins and 198 frames with 16-wide patches at stride 10: 5 x 19 patches.
    assert encoder.backbone.embeddings.position_embeddings.shape == (1, 2 + 95, 192)


def test_ast_base_preset_matches_audioset_grid():
    config = load_encoder_config("ast-base")
    assert config.num_frames == 1022
    # max_length 1022 and 1024 give the same 12 x 101 patch grid as the AudioSet checkpoints.
    assert (config.num_frames - 16) // 10 + 1 == (1024 - 16) // 10 + 1


def test_unknown_preset_raises():
    with pytest.raises(ValueError, match="unknown encoder preset"):
        load_encoder_config("ast-huge")


def test_unknown_option_raises():
    with pytest.raises(ValueError, match="hidden_sise"):
        load_encoder_config("ast-tiny", hidden_sise=10)


def test_yaml_file_loads(tmp_path):
    path = tmp_path / "enc.yaml"
    path.write_text("architecture: wav2vec2\nclip_seconds: 1.5\n")
    config = load_encoder_config(path)
    assert config.architecture == "wav2vec2"
    assert config.clip_samples == 24000


def test_cls_pooling_needs_ast():
    with pytest.raises(ValueError, match="pooling 'cls'"):
        load_encoder_config("wav2vec2-tiny", pooling="cls")


def test_too_short_ast_clip_raises():
    with pytest.raises(ValueError, match="patch size"):
        load_encoder_config("ast-tiny", clip_seconds=0.1)


# Forward and backward on real clips.


@pytest.mark.real_data
@pytest.mark.parametrize("architecture", ["ast", "wav2vec2"])
@pytest.mark.parametrize("pad_mode", ["repeat", "zero"])
def test_forward_backward_real_clips(mixed_clips, architecture, pad_mode):
    encoder = build_tiny(architecture, pad_mode=pad_mode)
    encoder.train()
    waves, masks = make_batch(mixed_clips, encoder.config, pad_mode)
    output = encoder(waves, masks)
    num_tokens = 95 if architecture == "ast" else 99
    assert output.pooled.shape == (4, 192)
    assert output.tokens.shape == (4, num_tokens, 192)
    assert output.token_mask.shape == (4, num_tokens)
    assert torch.isfinite(output.pooled).all()

    (output.pooled.pow(2).mean() + output.tokens.mean()).backward()
    missing = [name for name, p in encoder.named_parameters() if p.grad is None]
    non_finite = [
        name
        for name, p in encoder.named_parameters()
        if p.grad is not None and not torch.isfinite(p.grad).all()
    ]
    assert missing == []
    assert non_finite == []


@pytest.mark.real_data
@pytest.mark.parametrize("architecture", ["ast", "wav2vec2"])
def test_padding_values_ignored(mixed_clips, architecture):
    encoder = build_tiny(architecture, pad_mode="zero").eval()
    waves, masks = make_batch(mixed_clips, encoder.config, "zero")
    noisy = waves + torch.randn_like(waves) * (1 - masks)
    with torch.no_grad():
        clean_output = encoder(waves, masks)
        noisy_output = encoder(noisy, masks)
    assert int((masks == 0).sum()) > 0
    assert torch.allclose(clean_output.pooled, noisy_output.pooled, atol=1e-5)


@pytest.mark.parametrize(("architecture", "expected_tokens"), [("ast", 25), ("wav2vec2", 24)])
def test_token_mask_hand_computed(architecture, expected_tokens):
    # 8000 valid samples. AST: 48 frames, so time patches 0-4 (first frames 0, 10, ..., 40)
    # times 5 frequency patches. wav2vec2: 8000 -> 1599 -> 799 -> 399 -> 199 -> 99 -> 49 -> 24.
    encoder = build_tiny(architecture).eval()
    wave, mask = crop_or_pad(torch.randn(8000), 32000, mode="zero")
    with torch.no_grad():
        output = encoder(wave[None], mask[None])
    assert int(output.token_mask.sum()) == expected_tokens


@pytest.mark.parametrize("architecture", ["ast", "wav2vec2"])
def test_clip_shorter_than_frame_finite(architecture):
    encoder = build_tiny(architecture, pad_mode="zero").eval()
    wave, mask = crop_or_pad(torch.randn(100), 32000, mode="zero")
    with torch.no_grad():
        output = encoder(wave[None], mask[None])
    assert torch.isfinite(output.pooled).all()
    assert int(output.token_mask.sum()) >= 1


@pytest.mark.real_data
def test_precomputed_features_and_hook(mixed_clips):
    encoder = build_tiny("ast").eval()
    waves, masks = make_batch(mixed_clips, encoder.config, "repeat")
    seen_shapes = []

    def zero_high_bins(features):
        seen_shapes.append(tuple(features.shape))
        features = features.clone()
        features[..., 32:] = 0
        return features

    with torch.no_grad():
        direct = encoder(waves, masks)
        features, frame_mask = encoder.frontend(waves, masks)
        precomputed = encoder(features=features, feature_mask=frame_mask)
        hooked = encoder(waves, masks, feature_transform=zero_high_bins)
        encoder.feature_transform = zero_high_bins
        hooked_by_attribute = encoder(waves, masks)
    assert torch.equal(direct.pooled, precomputed.pooled)
    assert seen_shapes == [(4, 198, 64), (4, 198, 64)]
    assert not torch.allclose(direct.pooled, hooked.pooled)
    assert torch.equal(hooked.pooled, hooked_by_attribute.pooled)


# Saving and loading.


@pytest.mark.real_data
@pytest.mark.parametrize("architecture", ["ast", "wav2vec2"])
def test_save_load_identical(mixed_clips, tmp_path, architecture):
    encoder = build_tiny(architecture, pad_mode="zero").eval()
    if architecture == "ast":
        encoder.set_normalization_stats(-8.5, 3.25)
    encoder.save_pretrained(tmp_path)
    loaded = AudioEncoder.from_pretrained(tmp_path).eval()
    waves, masks = make_batch(mixed_clips, encoder.config, "zero")
    with torch.no_grad():
        before = encoder(waves, masks)
        after = loaded(waves, masks)
    assert torch.equal(before.pooled, after.pooled)
    assert torch.equal(before.tokens, after.tokens)
    assert loaded.config.pad_mode == "zero"
    assert loaded.config.norm_mean == encoder.config.norm_mean


def test_saved_ast_loads_in_transformers(tmp_path):
    encoder = build_tiny("ast")
    encoder.set_normalization_stats(-8.5, 3.25)
    encoder.save_pretrained(tmp_path)
    extractor = ASTFeatureExtractor.from_pretrained(tmp_path)
    model = ASTModel.from_pretrained(tmp_path)
    assert extractor.mean == -8.5
    assert extractor.std == 3.25
    assert extractor.num_mel_bins == 64
    assert model.config.max_length == 198
    assert (
        json.loads((tmp_path / "lungsound_encoder.json").read_text())["encoder_config"][
            "num_mel_bins"
        ]
        == 64
    )


def test_load_with_override(tmp_path):
    build_tiny("wav2vec2").save_pretrained(tmp_path)
    loaded = AudioEncoder.from_pretrained(tmp_path, pad_mode="zero", eval_crop="sliding")
    assert loaded.config.pad_mode == "zero"
    assert loaded.config.eval_crop == "sliding"
    assert loaded.config.pretrained == str(tmp_path)


# Plain transformers checkpoints.


def test_interpolation_matches_naive():
    torch.manual_seed(2)
    embeddings = torch.randn(1, 2 + 3 * 7, 4)
    resized = interpolate_time_position_embeddings(embeddings, frequency_patches=3, time_patches=12)
    grid = embeddings[0, 2:].reshape(3, 7, 4).numpy()
    expected = naive_time_interpolation(grid, 12)
    assert resized.shape == (1, 2 + 3 * 12, 4)
    assert torch.equal(resized[:, :2], embeddings[:, :2])
    np.testing.assert_allclose(
        resized[0, 2:].reshape(3, 12, 4).numpy(), expected, rtol=0, atol=1e-5
    )


def test_interpolation_same_size_identity():
    embeddings = torch.randn(1, 2 + 2 * 5, 3)
    resized = interpolate_time_position_embeddings(embeddings, frequency_patches=2, time_patches=5)
    assert torch.allclose(resized, embeddings, atol=1e-6)


@pytest.mark.real_data
def test_plain_ast_checkpoint_interpolated(mixed_clips, tmp_path):
    checkpoint = tiny_ast_checkpoint(tmp_path, max_length=298)
    old = checkpoint.audio_spectrogram_transformer.embeddings.position_embeddings.detach()
    encoder = AudioEncoder.from_pretrained(tmp_path, clip_seconds=1.0).eval()

    # 1 s = 98 frames: 9 time patches instead of 29, 2 frequency patches from 32 mel bins.
    new = encoder.backbone.embeddings.position_embeddings.detach()
    assert encoder.backbone.config.max_length == 98
    assert new.shape == (1, 2 + 2 * 9, 32)
    new_grid = new[0, 2:].reshape(2, 9, 32)
    old_grid = old[0, 2:].reshape(2, 29, 32)
    assert torch.equal(new[:, :2], old[:, :2])
    assert torch.allclose(new_grid[:, 0], old_grid[:, 0], atol=1e-6)
    assert torch.allclose(new_grid[:, -1], old_grid[:, -1], atol=1e-6)
    np.testing.assert_allclose(
        new_grid.numpy(), naive_time_interpolation(old_grid.numpy(), 9), atol=1e-5
    )

    old_query = checkpoint.audio_spectrogram_transformer.layers[0].attention.q_proj.weight
    assert torch.equal(encoder.backbone.layers[0].attention.q_proj.weight, old_query)
    assert encoder.config.norm_mean == -6.0
    assert encoder.config.pooling == "cls"

    waves, masks = make_batch(mixed_clips, encoder.config, "repeat")
    with torch.no_grad():
        output = encoder(waves, masks)
    assert output.pooled.shape == (4, 32)
    assert output.tokens.shape == (4, 18, 32)
    assert torch.isfinite(output.tokens).all()


@pytest.mark.real_data
def test_plain_ast_matches_transformers(mixed_clips, tmp_path):
    tiny_ast_checkpoint(tmp_path, max_length=298)
    encoder = AudioEncoder.from_pretrained(tmp_path).eval()
    assert encoder.backbone.config.max_length == 298

    waves, _ = make_batch(mixed_clips, encoder.config, "repeat")
    extractor = ASTFeatureExtractor.from_pretrained(tmp_path)
    features = extractor(list(waves.numpy()), sampling_rate=16000, return_tensors="pt")[
        "input_values"
    ]
    reference = ASTModel.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = reference(features).pooler_output
        output = encoder(waves)
    assert torch.allclose(output.pooled, expected, atol=1e-4)


def test_plain_ast_mel_bins_mismatch_raises(tmp_path):
    tiny_ast_checkpoint(tmp_path, num_mel_bins=32)
    with pytest.raises(ValueError, match="32 mel bins"):
        AudioEncoder.from_pretrained(tmp_path, num_mel_bins=64)


@pytest.mark.real_data
def test_plain_wav2vec2_checkpoint(mixed_clips, tmp_path):
    torch.manual_seed(3)
    # Group norm in the feature encoder, as wav2vec2-base has.
    config = Wav2Vec2Config(
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=64,
        conv_dim=[16] * 7,
        num_conv_pos_embeddings=16,
        num_conv_pos_embedding_groups=4,
    )
    Wav2Vec2Model(config).save_pretrained(tmp_path)
    encoder = AudioEncoder.from_pretrained(tmp_path).eval()
    assert encoder.config.conv_dim == [16] * 7
    assert encoder.hidden_size == 32

    waves, _ = make_batch(mixed_clips, encoder.config, "repeat")
    normalised = (waves - waves.mean(dim=1, keepdim=True)) / torch.sqrt(
        waves.var(dim=1, unbiased=False, keepdim=True) + 1e-7
    )
    reference = Wav2Vec2Model.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        expected = reference(normalised).last_hidden_state
        output = encoder(waves)
    assert torch.allclose(output.tokens, expected, atol=1e-4)


def test_other_model_type_raises(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "bert"}))
    with pytest.raises(ValueError, match="'bert'"):
        AudioEncoder.from_pretrained(tmp_path)


def test_missing_directory_raises(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        AudioEncoder.from_pretrained(str(tmp_path / "no" / "such" / "encoder"))


def test_offline_unknown_hub_id_raises(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(FileNotFoundError, match="offline mode"):
        AudioEncoder.from_pretrained("lungsound-ssl-tests/no-such-model")
