"""Speaker separation on conversations with known turns, and the models and measures under it.

Conversations are mixed from two real CMU ARCTIC speakers and espeak-ng voices
(``anytalker_core.testing.conversation``); the true turns are where each utterance was placed.
Values are checked against that ground truth, against the packages' own code (Silero's
``get_speech_timestamps``, ``resemblyzer.VoiceEncoder``) and against BS.1770's definition of a sine's
loudness.
"""

from __future__ import annotations

import functools
import sys
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from conftest import missing

from anytalker_core.audio.diarize import Diarization, interval_keys, intervals_json, order_speakers
from anytalker_core.audio.loudness import integrated_loudness, normalize_loudness
from anytalker_core.audio.speakers import load_voice_encoder, mel_frames
from anytalker_core.audio.vad import load_vad, speech_intervals
from anytalker_core.audio.voices import gate, split_voices, write_split
from anytalker_core.errors import InputError
from anytalker_core.metrics.diarization import diarization_error_rate
from anytalker_core.testing.conversation import make_conversation
from anytalker_core.testing.speech import espeak_available

pytestmark = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")

SR = 16000


@pytest.fixture(autouse=True)
def _torch_threads():
    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)  # importing silero_vad (the reference below) sets 1 thread process-wide


# ------------------------------------------------------------------------------------------- measures


def test_der_matches_hand_computed_values():
    ref = [[(0.0, 4.0)], [(4.0, 6.0)]]
    assert diarization_error_rate(ref, ref).der == pytest.approx(0.0)
    # hypothesis speakers swapped: the mapping absorbs it
    assert diarization_error_rate(ref, [[(4.0, 6.0)], [(0.0, 4.0)]]).der == pytest.approx(0.0)
    # 1 s of speaker 0 given to speaker 1 (confusion), 0.5 s missed, 0.5 s false alarm; 6 s of reference
    score = diarization_error_rate(ref, [[(0.5, 3.0)], [(3.0, 6.5)]])
    assert (score.missed, score.false_alarm, score.confusion) == pytest.approx((0.5, 0.5, 1.0))
    assert score.der == pytest.approx(2.0 / 6.0)
    # overlap in the reference, one speaker in the hypothesis: the second voice is missed
    assert diarization_error_rate([[(0, 2)], [(1, 2)]], [[(0, 2)]]).der == pytest.approx(1 / 3)


def test_bs1770_loudness_of_a_sine_and_normalisation():
    t = np.arange(3 * 48000) / 48000
    sine = 0.5 * np.sin(2 * np.pi * 997 * t)  # BS.1770: a 0 dBFS 997 Hz sine reads -3.01 LUFS
    assert integrated_loudness(sine, 48000) == pytest.approx(-3.01 + 20 * np.log10(0.5), abs=0.05)
    stereo = np.stack([sine, sine])  # two identical channels add 3 dB
    assert integrated_loudness(stereo, 48000) == pytest.approx(-3.01 + 20 * np.log10(0.5) + 3.01, abs=0.05)
    out = normalize_loudness(torch.from_numpy(sine).float(), 48000, -30.0)
    assert integrated_loudness(out, 48000) == pytest.approx(-30.0, abs=0.05)
    loud = normalize_loudness(torch.from_numpy(sine).float(), 48000, -1.0)  # would need peak > 0.99
    assert float(loud.abs().max()) == pytest.approx(0.99, abs=1e-4)
    short = integrated_loudness(sine[:4800], 48000)  # 0.1 s: measured on its repetition
    assert short == pytest.approx(-3.01 + 20 * np.log10(0.5), abs=0.1)
    silent = normalize_loudness(torch.zeros(16000), 16000)
    assert float(silent.abs().max()) == 0.0


# ------------------------------------------------------------------------------------------- models


def test_vad_matches_silero_reference_and_finds_the_turns():
    conv = make_conversation(["arctic_a", "low"], 4, seed=5)
    ours = speech_intervals(conv.mix, SR)
    import silero_vad

    model = silero_vad.load_silero_vad()
    theirs = silero_vad.get_speech_timestamps(torch.from_numpy(conv.mix), model, return_seconds=False)
    theirs = [(t["start"] / SR, t["end"] / SR) for t in theirs]
    assert len(ours) == len(theirs)
    np.testing.assert_allclose(np.array(ours), np.array(theirs), atol=0.035)
    # every true turn is covered by detected speech; nothing is detected in the silence before the first
    truth = sorted(t for spans in conv.turns for t in spans)
    covered = sum(min(e, oe) - max(s, os) for s, e in truth for os, oe in ours if min(e, oe) > max(s, os))
    assert covered / sum(e - s for s, e in truth) > 0.9
    assert ours[0][0] >= truth[0][0] - 0.1
    assert speech_intervals(np.zeros(SR * 2, np.float32), SR) == []
    with pytest.raises(InputError, match="NaN"):
        speech_intervals(np.full(SR, np.nan, np.float32), SR)


def test_voice_encoder_equals_resemblyzer():
    resemblyzer = pytest.importorskip("resemblyzer")  # its import needs webrtcvad (webrtcvad-wheels)
    conv = make_conversation(["arctic_b"], 1, seed=0)
    wave = conv.mix[: 2 * SR]
    np.testing.assert_allclose(mel_frames(wave), resemblyzer.wav_to_mel_spectrogram(wave), rtol=1e-5, atol=1e-7)
    ours = load_voice_encoder()
    ref = resemblyzer.VoiceEncoder("cpu", verbose=False)
    mels = mel_frames(wave)
    got = ours.embed_windows(mels, np.array([0, 20, 40]), 160)
    with torch.no_grad():
        want = ref(torch.from_numpy(np.stack([mels[s:s + 160] for s in (0, 20, 40)]))).numpy()
    np.testing.assert_allclose(got, want, atol=1e-5)


# ------------------------------------------------------------------------------------------- diarisation


CASES = {  # name: (speakers, seed)
    "two real people": (["arctic_a", "arctic_b"], 3),
    "real and espeak": (["arctic_b", "high"], 4),
    "three people": (["arctic_a", "low", "high"], 7),
    "one person": (["low"], 2),
}


@functools.lru_cache(maxsize=None)
def conversation(name):
    speakers, seed = CASES[name]
    return make_conversation(speakers, 7, seed=seed)


def _energy_shares(conv, turns, mapping):
    keep, leak = [], []
    for h, spans in enumerate(turns):
        g = gate(conv.mix.size, SR, spans)
        for r, src in enumerate(conv.sources):
            share = float(np.sum((g * src) ** 2) / np.sum(src ** 2))
            (keep if mapping.get(h) == r else leak).append(share)
    return keep, leak


@pytest.mark.parametrize("name", ["two real people", "real and espeak", "three people"])
def test_split_with_known_count(name):
    conv = conversation(name)
    result = split_voices(conv.mix, SR, num_speakers=len(conv.speakers))
    score = diarization_error_rate(conv.turns, result.diarization.turns)
    assert score.der <= 0.15, score
    keep, leak = _energy_shares(conv, result.diarization.turns, score.mapping)
    assert len(keep) == len(conv.speakers) and min(keep) >= 0.9, keep
    assert max(leak) <= 0.1, leak
    # first to speak = speaker 1
    assert score.mapping[0] == 0
    # the track is the mix gated: the input itself inside a turn, zero well outside every turn
    track = result.tracks[0][0]
    s, e = result.diarization.turns[0][0]
    mid = slice(int(s * SR) + 100, int(e * SR) - 100)
    np.testing.assert_array_equal(track[mid], conv.mix[mid])
    assert not np.any(track[:max(0, int(s * SR) - 200)])


@pytest.mark.parametrize("name", ["one person", "two real people", "three people"])
def test_speaker_count_is_estimated(name):
    conv = conversation(name)
    result = split_voices(conv.mix, SR)
    assert result.diarization.num_speakers == len(conv.speakers)
    assert diarization_error_rate(conv.turns, result.diarization.turns).der <= 0.15


def test_overlapping_speech_reaches_every_track_and_order_rules():
    d = Diarization(turns=[[(0.0, 2.0), (5.0, 6.0)], [(1.5, 4.8)]], duration=6.0, speech=[(0.0, 6.0)],
                    centroids=np.eye(2, 256))
    assert order_speakers(d, "first").turns == d.turns
    assert order_speakers(d, "first", order=[2, 1]).turns == [d.turns[1], d.turns[0]]
    assert order_speakers(d, "most").turns[0] == d.turns[1]  # 3.3 s of speech > 3.0 s
    with pytest.raises(InputError, match="exactly once"):
        order_speakers(d, "first", order=[1, 1])
    with pytest.raises(InputError, match="'first'"):
        order_speakers(d, "loudest")
    g0, g1 = gate(6 * SR, SR, d.turns[0]), gate(6 * SR, SR, d.turns[1])
    both = slice(int(1.6 * SR), int(1.9 * SR))  # 1.5-2.0 s: both speak, both tracks keep it
    assert np.all(g0[both] == 1) and np.all(g1[both] == 1)
    assert np.all(g0[int(2.1 * SR):int(4.9 * SR)] == 0) and np.all(g1[int(4.9 * SR):] == 0)
    assert interval_keys(2) == ["left", "right"] and interval_keys(3) == ["speaker1", "speaker2", "speaker3"]
    assert intervals_json(d.turns) == {"left": [[0.0, 2.0], [5.0, 6.0]], "right": [[1.5, 4.8]]}
    assert d.overlaps() == [(1.5, 2.0, (0, 1))]


def _true_overlaps(conv):
    """(start, end, speakers) where two true turns overlap."""
    out = []
    for a in range(len(conv.turns)):
        for b in range(a + 1, len(conv.turns)):
            for s1, e1 in conv.turns[a]:
                for s2, e2 in conv.turns[b]:
                    if min(e1, e2) - max(s1, s2) > 0.05:
                        out.append((max(s1, s2), min(e1, e2), (a, b)))
    return out


def test_deliberate_overlaps_stay_in_both_tracks():
    # half the turns start 0.6 s before the previous one ends: the two voices overlap for 0.6 s
    conv = make_conversation(["arctic_a", "low"], 8, seed=11, overlap_s=0.6, overlap_chance=0.5)
    result = split_voices(conv.mix, SR, num_speakers=2)
    turns = result.diarization.turns
    score = diarization_error_rate(conv.turns, turns)
    assert score.der <= 0.15, score
    track_of = {r: h for h, r in score.mapping.items()}
    overlaps = _true_overlaps(conv)
    assert len(overlaps) == 3
    time_in_both, kept, total = 0.0, 0.0, 0.0
    for s, e, who in overlaps:
        a, b = int(s * SR), int(e * SR)
        gates = {r: gate(conv.mix.size, SR, turns[track_of[r]])[a:b] for r in who}
        time_in_both += float(np.mean(np.minimum(*gates.values()) > 0.5)) * (e - s)
        for r in who:  # the overlapped part of each voice is (mostly) in that speaker's own track
            src = conv.sources[r][a:b]
            kept += float(np.sum((gates[r] * src) ** 2))
            total += float(np.sum(src ** 2))
    assert time_in_both / sum(e - s for s, e, _ in overlaps) >= 0.7, time_in_both
    assert kept / total >= 0.8, kept / total
    # intervals.json lists each overlapping interval for both speakers
    listed = result.diarization.overlaps()
    assert all(any(min(e, le) - max(s, ls) > 0.5 * (e - s) for ls, le, _ in listed) for s, e, _ in overlaps), listed
    # outside the overlaps the voices stay apart: what leaks is about what gating the true turns lets through
    keep, leak = _energy_shares(conv, turns, score.mapping)
    _, true_leak = _energy_shares(conv, conv.turns, {0: 0, 1: 1})
    assert min(keep) >= 0.9 and max(leak) <= max(true_leak) + 0.05, (keep, leak, true_leak)


def test_stereo_44k_file_keeps_its_rate_and_channels(tmp_path):
    from anytalker_core.cli import main
    from anytalker_core.io.media import resample

    conv = make_conversation(["arctic_a", "high"], 4, seed=8)
    mix44 = resample(conv.mix, SR, 44100).numpy()
    stereo = np.stack([mix44, 0.5 * mix44])
    path = tmp_path / "mix.wav"
    sf.write(path, stereo.T, 44100, subtype="FLOAT")
    assert main(["split-voices", str(path), "--speakers", "2", "--out", str(tmp_path / "out")]) == 0
    intervals = json.loads((tmp_path / "out" / "intervals.json").read_text())
    assert set(intervals) == {"left", "right"}
    assert diarization_error_rate(conv.turns, [intervals["left"], intervals["right"]]).der <= 0.15
    for k in (1, 2):
        data, rate = sf.read(tmp_path / "out" / f"speaker{k}.wav", always_2d=True)
        assert rate == 44100 and data.shape == stereo.T.shape
        np.testing.assert_allclose(data[:, 1], 0.5 * data[:, 0], atol=2 / 32768)  # channels kept apart
    # --order swaps the people
    assert main(["split-voices", str(path), "--speakers", "2", "--order", "2,1", "--out", str(tmp_path / "swap")]) == 0
    swapped = json.loads((tmp_path / "swap" / "intervals.json").read_text())
    assert swapped["left"] == intervals["right"] and swapped["right"] == intervals["left"]


def test_bad_inputs_are_named(tmp_path, capsys):
    from anytalker_core.cli import main

    with pytest.raises(InputError, match="no speech found"):
        split_voices(np.zeros(SR * 2, np.float32), SR)
    with pytest.raises(InputError, match="number of speakers"):
        split_voices(np.zeros(SR, np.float32), SR, num_speakers=9)
    with pytest.raises(InputError, match="sample_rate"):
        split_voices(np.zeros(SR, np.float32), 0)
    assert main(["split-voices", str(tmp_path / "missing.wav"), "--out", str(tmp_path / "o")]) == 2
    conv = make_conversation(["low"], 2, seed=0)
    path = tmp_path / "mix.wav"
    sf.write(path, conv.mix, SR)
    assert main(["split-voices", str(path), "--order", "a,b", "--out", str(tmp_path / "o")]) == 2
    (tmp_path / "file").write_text("x")
    result = split_voices(conv.mix, SR, num_speakers=1)
    with pytest.raises(InputError, match="--out"):
        write_split(result, tmp_path / "file")


def test_generate_conversation_flags_are_checked_before_loading_models(tmp_path):
    from anytalker_core.cli import main

    image = tmp_path / "i.png"
    image.write_bytes(b"")
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.zeros(SR, np.float32), SR)
    base = ["generate", "--image", str(image), "--out", str(tmp_path / "o.mp4")]
    assert main(base + ["--conversation", str(mix), "--audio", str(mix)]) == 2  # one or the other
    assert main(base + ["--conversation", str(mix), "--audio-mode", "concat"]) == 2
    assert main(base + ["--conversation", str(tmp_path / "missing.wav")]) == 2
    assert main(base + ["--audio", str(mix), "--speakers", "2"]) == 2  # only with --conversation
    assert main(base + ["--audio", str(mix), "--separate", str(mix)]) == 2
    assert main(base + ["--conversation", str(mix), "--separate", str(tmp_path / "none.bin")]) == 2


# ------------------------------------------------------------------------------------------- separation


def _asteroid_models():
    """asteroid.models; scripts/setup.sh installs Asteroid, so CI fails rather than skips without it."""
    try:
        import asteroid.models
    except ImportError:
        missing("asteroid is not installed (pip install --no-deps asteroid asteroid-filterbanks)")
    return asteroid.models


def _tiny_asteroid_file(path, n_src=2, sample_rate=8000, **changes):
    """A randomly initialised ConvTasNet in Asteroid's own file format (what ``BaseModel.serialize`` writes)."""
    models = _asteroid_models()
    torch.manual_seed(0)
    model = models.ConvTasNet(n_src=n_src, n_blocks=2, n_repeats=1, bn_chan=16, hid_chan=32, skip_chan=16,
                              n_filters=32, kernel_size=16, stride=8, sample_rate=sample_rate)
    conf = dict(model_name="ConvTasNet", state_dict=model.state_dict(), model_args=model.get_model_args(),
                infos=dict(software_versions=dict(torch_version=torch.__version__, asteroid_version="0.7.0")))
    conf.update(changes)
    torch.save(conf, path)
    return model


def test_separation_model_loads_from_asteroid_file_and_runs_at_its_rate(tmp_path):
    from anytalker_core.audio.separation import load_separator
    from anytalker_core.io.media import resample

    path = tmp_path / "pytorch_model.bin"
    reference = _tiny_asteroid_file(path).eval()
    sep = load_separator(path)
    assert (sep.num_sources, sep.sample_rate) == (2, 8000)
    wave = make_conversation(["arctic_a"], 1, seed=0).mix[:SR]
    got = sep.separate(wave, SR)  # 16 kHz in: resampled to the model's 8 kHz and back
    with torch.no_grad():
        want = reference(resample(torch.from_numpy(wave), SR, 8000)[None])[0]
    want = torch.stack([resample(s, 8000, SR) for s in want]).numpy()
    assert got.shape == (2, SR)
    np.testing.assert_allclose(got, want[:, :SR], atol=1e-5)


def test_separation_errors_name_the_flag(tmp_path, monkeypatch):
    from anytalker_core.audio.separation import load_separator
    from anytalker_core.errors import CheckpointError, MissingModelError

    with pytest.raises(MissingModelError, match="--separate .*no such file"):
        load_separator(tmp_path / "missing.bin")
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="could not be read"):
        load_separator(bad)
    torch.save({"state_dict": {}}, tmp_path / "plain.pth")
    with pytest.raises(CheckpointError, match="not an Asteroid model file: missing model_name, model_args"):
        load_separator(tmp_path / "plain.pth")
    _tiny_asteroid_file(tmp_path / "unknown.bin", model_name="NoSuchNet")
    with pytest.raises(CheckpointError, match="unknown Asteroid model 'NoSuchNet'.*ConvTasNet"):
        load_separator(tmp_path / "unknown.bin")
    _tiny_asteroid_file(tmp_path / "shapes.bin", state_dict={"encoder.filterbank._filters": torch.zeros(3, 1, 5)})
    with pytest.raises(CheckpointError, match="weights do not fit"):
        load_separator(tmp_path / "shapes.bin")
    _tiny_asteroid_file(tmp_path / "one.bin", n_src=1)
    with pytest.raises(CheckpointError, match="two or more sources", ):
        load_separator(tmp_path / "one.bin", flag="separation_model")
    monkeypatch.setitem(sys.modules, "asteroid", None)
    monkeypatch.setitem(sys.modules, "asteroid.models", None)
    with pytest.raises(MissingModelError, match="pip install --no-deps asteroid asteroid-filterbanks"):
        load_separator(tmp_path / "one.bin")


def test_separated_sources_are_matched_to_their_speakers():
    # a perfect separator (the true sources, in a random order in every chunk) shows what matching does:
    # each track is its own voice only, overlapping speech included
    from anytalker_core.audio.separation import separate_tracks

    conv = make_conversation(["arctic_b", "high"], 8, seed=11, overlap_s=0.6, overlap_chance=0.5)
    result = split_voices(conv.mix, SR, num_speakers=2)
    key = np.lib.stride_tricks.sliding_window_view(conv.mix, 32)
    rng = np.random.default_rng(0)
    calls = []

    def oracle(chunk, rate):
        assert rate == SR
        i = int(np.flatnonzero(np.abs(chunk) > 1e-2)[0])  # locate the chunk (a real speaker repeats a sentence)
        start = next(int(c) - i for c in np.flatnonzero((key == chunk[i:i + 32]).all(1))
                     if np.array_equal(conv.mix[c - i:c - i + chunk.size], chunk))
        calls.append(start)
        sources = np.stack([s[start:start + chunk.size] for s in conv.sources])
        return sources[rng.permutation(2)]

    tracks = separate_tracks(conv.mix[None], SR, result.diarization, oracle)
    assert len(calls) >= 3
    mapping = diarization_error_rate(conv.turns, result.diarization.turns).mapping
    for h, r in mapping.items():
        g = gate(conv.mix.size, SR, result.diarization.turns[h])
        np.testing.assert_allclose((tracks[h][0] * g)[g > 0], (conv.sources[r] * g)[g > 0], atol=1e-6)
        other = conv.sources[1 - r]  # gating the mix alone would have let this much of the other voice through
        assert float(np.sum((g * other) ** 2) / np.sum(other ** 2)) > 0.02


def test_split_voices_with_a_separation_model(tmp_path):
    from anytalker_core.cli import main

    path = tmp_path / "tiny.bin"
    _tiny_asteroid_file(path)
    conv = make_conversation(["arctic_a", "high"], 4, seed=8)
    mix = tmp_path / "mix.wav"
    sf.write(mix, np.stack([conv.mix, conv.mix]).T, SR, subtype="FLOAT")
    plain = split_voices(conv.mix, SR, num_speakers=2)
    assert main(["split-voices", str(mix), "--speakers", "2", "--separate", str(path), "--out", str(tmp_path / "o")]) == 0
    intervals = json.loads((tmp_path / "o" / "intervals.json").read_text())
    assert intervals == plain.intervals  # separation changes the tracks, not who speaks when
    for k, spans in enumerate(plain.diarization.turns):
        data, rate = sf.read(tmp_path / "o" / f"speaker{k + 1}.wav", always_2d=True)
        assert rate == SR and data.shape == (conv.mix.size, 2)
        np.testing.assert_array_equal(data[:, 0], data[:, 1])  # one separated source on every channel
        g = gate(conv.mix.size, SR, spans)
        assert not np.any(data[g == 0])  # still gated
        inside = g == 1
        assert np.abs(data[inside, 0] - np.clip(conv.mix[inside], -1, 1)).max() > 1e-3  # not the mix itself
    # a missing model file is refused before anything runs
    assert main(["split-voices", str(mix), "--separate", str(tmp_path / "none.bin"), "--out", str(tmp_path / "p")]) == 2
    assert not (tmp_path / "p").exists()
