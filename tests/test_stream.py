"""Streaming: incremental features and resampling equal their whole-signal versions, and a unidirectional
transducer fed chunk by chunk (from a file, a raw PCM stream or standard input) gives the whole-utterance result."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import soundfile as sf
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from test_transducer import WORDS, make_model, tiny_trained

from asrkit.checkpoint import Loaded, load_checkpoint
from asrkit.config import FeatureConfig, build_config
from asrkit.data.audio import load_audio, resample
from asrkit.data.features import Featurizer
from asrkit.data.tokenizer import CharTokenizer
from asrkit.errors import AsrkitError
from asrkit.models import build_model
from asrkit.stream import (
    Partial,
    Streamer,
    StreamingFeaturizer,
    StreamingResampler,
    audio_chunks,
    stream_transcribe,
)

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def featurizer(n_mels: int = 20, normalize: bool = True) -> Featurizer:
    gen = torch.Generator().manual_seed(0)
    return Featurizer(FeatureConfig(n_mels=n_mels, normalize=normalize), torch.randn(n_mels, generator=gen),
                      torch.rand(n_mels, generator=gen) + 0.5)


def pieces(wave: torch.Tensor, cuts: list[int]) -> list[torch.Tensor]:
    bounds = [0, *sorted(c for c in cuts if 0 < c < len(wave)), len(wave)]
    return [wave[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]


# --- features and resampling ----------------------------------------------------------------------------


@given(n=st.integers(1, 9000), cuts=st.lists(st.integers(1, 9000), max_size=8), normalize=st.booleans())
@settings(max_examples=50, deadline=None)
def test_streaming_features_equal_whole_utterance_features(n: int, cuts: list[int], normalize: bool) -> None:
    feat = featurizer(normalize=normalize)
    wave = torch.randn(n, generator=torch.Generator().manual_seed(n)) * 0.1
    stream = StreamingFeaturizer(feat)
    got = torch.cat([stream.accept(p) for p in pieces(wave, cuts)] + [stream.finish()])
    want = feat(wave)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("orig,new", [(8000, 16000), (44100, 16000), (48000, 16000), (22050, 16000)])
@pytest.mark.parametrize("chunk", [1, 333, 4800, 10**6])
def test_streaming_resampler_equals_whole_signal_resampling(orig: int, new: int, chunk: int) -> None:
    wave = torch.randn(12_345, generator=torch.Generator().manual_seed(orig))
    stream = StreamingResampler(orig, new)
    got = torch.cat([stream.accept(wave[i : i + chunk]) for i in range(0, len(wave), chunk)] + [stream.finish()])
    want = resample(wave, orig, new)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def pcm_bytes(wave: np.ndarray) -> bytes:
    return (np.clip(wave, -1, 1 - 2**-15) * 32768).astype("<i2").tobytes()


def test_raw_pcm_chunks_equal_the_same_audio_as_a_wav_file(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    wave = (rng.standard_normal(8000 * 2) * 0.2).astype(np.float32)
    raw = pcm_bytes(wave)
    wav = tmp_path / "a.wav"
    sf.write(wav, np.frombuffer(raw, dtype="<i2"), 8000, subtype="PCM_16")
    want = load_audio(wav, 16000)  # decoded and resampled as a whole
    chunks = list(audio_chunks(io.BytesIO(raw), 250, 16000, pcm_rate=8000))
    torch.testing.assert_close(torch.cat(chunks), want, atol=1e-5, rtol=1e-5)
    same_rate = list(audio_chunks(io.BytesIO(raw), 100, 8000, pcm_rate=8000))
    assert [len(c) for c in same_rate[:-1]] == [800] * (len(same_rate) - 1)
    torch.testing.assert_close(torch.cat(same_rate), load_audio(wav, 8000))


def test_raw_pcm_refuses_a_wav_header_and_warns_about_half_a_sample(tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    buf = io.BytesIO()
    sf.write(buf, np.zeros(1600, dtype=np.int16), 16000, format="WAV", subtype="PCM_16")
    with pytest.raises(AsrkitError, match="WAV file, not raw PCM"):
        list(audio_chunks(io.BytesIO(buf.getvalue()), 100, 16000))
    chunks = list(audio_chunks(io.BytesIO(b"\x00\x01" * 10 + b"\x07"), 100, 16000))
    assert sum(len(c) for c in chunks) == 10
    assert "half a 16-bit sample" in capsys.readouterr().err


# --- streaming decoding equals whole-utterance decoding -------------------------------------------------


def loaded_random_model(decode: dict[str, Any] | None = None, **overrides: object) -> Loaded:
    """A random transducer whose checkpoint config holds `decode` (its [decode]: the search streaming uses)."""
    cfg = build_config({"model": {"family": "transducer"}, "features": {"n_mels": 20}, "decode": decode or {}})
    model = make_model(vocab=7, seed=2, **overrides).eval()
    return Loaded(cfg, CharTokenizer(list("abcdef")), featurizer(), model, {}, Path("random.pt"))


def whole(loaded: Loaded, wave: torch.Tensor) -> list:
    feats = loaded.featurizer(wave)
    return loaded.model.decode(feats[None], torch.tensor([len(feats)]), loaded.config.decode.search_options(),
                               tokenizer=loaded.tokenizer, frame_shift=loaded.featurizer.frame_shift)[0]


@pytest.mark.parametrize("decode", [{"beam_size": 1}, {"beam_size": 3, "nbest": 3}], ids=["greedy", "beam"])
@pytest.mark.parametrize("chunk_ms", [10, 70, 320, 5000])
def test_random_model_streams_exactly_like_whole_utterance(decode: dict[str, Any], chunk_ms: int) -> None:
    loaded = loaded_random_model(decode)
    wave = torch.randn(21_000, generator=torch.Generator().manual_seed(1)) * 0.1
    result = stream_transcribe(loaded, io.BytesIO(pcm_bytes(wave.numpy())), chunk_ms=chunk_ms)
    want = whole(loaded, torch.from_numpy(np.frombuffer(pcm_bytes(wave.numpy()), "<i2") / 32768.0).float())
    assert [h.tokens for h in result.hypotheses] == [h.tokens for h in want]
    assert [h.score for h in result.hypotheses] == pytest.approx([h.score for h in want], abs=1e-3)
    assert len(result.latencies) == -(-21_000 // round(16 * chunk_ms))
    assert result.audio_s == pytest.approx(21_000 / 16000)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return tiny_trained(tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("chunk_ms", [40, 200, 320])
def test_trained_model_streams_its_training_words(trained: tuple[Path, Path], chunk_ms: int) -> None:
    data, exp = trained
    loaded = load_checkpoint(exp, "cpu")
    for word in WORDS:
        wav = data / f"{word}.wav"
        partials: list[Partial] = []
        result = stream_transcribe(loaded, wav, chunk_ms=chunk_ms, on_partial=partials.append)
        ((want,),) = loaded.model.decode(*_feats(loaded, wav), loaded.config.decode.search_options(),
                                         tokenizer=loaded.tokenizer, frame_shift=loaded.featurizer.frame_shift)
        assert result.hypothesis.text == want.text == word
        assert result.hypothesis.tokens == want.tokens
        assert result.hypothesis.words == want.words  # the same frames, so the same timings
        assert len(partials) == len(result.latencies) and all(p.latency_s >= 0 for p in partials)
        for p in partials:  # greedy: what is stable never changes, so it is a prefix of the final text
            assert word.startswith(p.stable) and p.text == p.stable
        assert [p.audio_s for p in partials] == sorted(p.audio_s for p in partials)


def _feats(loaded: Loaded, wav: Path) -> tuple[torch.Tensor, torch.Tensor]:
    feats = loaded.featurizer(load_audio(wav, loaded.featurizer.cfg.sample_rate))
    return feats[None], torch.tensor([len(feats)])


@pytest.mark.slow
def test_standard_input_dash(trained: tuple[Path, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    data, exp = trained
    raw = sf.read(data / "two.wav", dtype="int16")[0].astype("<i2").tobytes()
    rate = sf.info(data / "two.wav").samplerate

    class Stdin:
        buffer = io.BytesIO(raw)

    monkeypatch.setattr("sys.stdin", Stdin())
    result = stream_transcribe(exp, "-", chunk_ms=300, pcm_rate=rate, device="cpu")
    assert result.hypothesis.text == "two"


def test_models_that_cannot_stream_say_why(tmp_path: Path) -> None:
    with pytest.raises(AsrkitError, match="bidirectional"):
        Streamer(loaded_random_model(bidirectional=True))
    cfg = build_config({"features": {"n_mels": 20}, "model": {"conv_channels": 4, "rnn_hidden": 8, "rnn_layers": 1}})
    ds2 = Loaded(cfg, CharTokenizer(list("ab")), featurizer(), build_model(cfg, 20, 3), {}, Path("ds2.pt"))
    with pytest.raises(AsrkitError, match="deepspeech2 model cannot stream"):
        Streamer(ds2)
    with pytest.raises(AsrkitError, match="--chunk-ms 5 must be between"):
        stream_transcribe(ds2, "-", chunk_ms=5)
    with pytest.raises(AsrkitError, match="no audio received"):
        stream_transcribe(loaded_random_model(), io.BytesIO(b""), chunk_ms=100)


def cli_app() -> Any:
    from asrkit.cli import app

    return app


@pytest.mark.slow
def test_cli_transcribe_stream(trained: tuple[Path, Path], tmp_path: Path) -> None:
    """`asrkit transcribe MODEL AUDIO --stream` (files and '-')."""
    from typer.testing import CliRunner

    app, runner = cli_app(), CliRunner()
    data, exp = trained
    wavs = [str(data / f"{w}.wav") for w in ("two", "three")]
    result = runner.invoke(app, ["transcribe", str(exp), *wavs, "--stream", "--chunk-ms", "100", "--device", "cpu"])
    assert result.exit_code == 0, result.output
    assert result.stdout.splitlines() == [f"{wavs[0]}\ttwo", f"{wavs[1]}\tthree"]
    assert "compute per chunk" in result.stderr and "two" in result.stderr  # latency and partials on stderr
    raw = sf.read(data / "three.wav", dtype="int16")[0].astype("<i2").tobytes()
    rate = sf.info(data / "three.wav").samplerate
    result = runner.invoke(app, ["transcribe", str(exp), "-", "--stream", "--pcm-rate", str(rate), "--format", "jsonl",
                                 "--device", "cpu"], input=raw)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["text"] == "three"
    result = runner.invoke(app, ["transcribe", str(exp), "-", "--device", "cpu"], input=raw)
    assert result.exit_code == 2 and "needs --stream" in result.stderr
    result = runner.invoke(app, ["transcribe", str(exp), wavs[0], "--stream", "--chunk-ms", "1", "--device", "cpu"])
    assert result.exit_code == 2 and "--chunk-ms 1 must be between" in result.stderr
