"""Audio: PyAV decoding, log-mel spectrogram, windows centred on video frames, padding, no audio track."""
import numpy as np

from abaw_ce import challenge_file
from abaw_ce.audio import (LOG_FLOOR, MelSettings, frame_windows, log_mel, mel_filterbank, read_audio,
                           video_frame_windows)
from abaw_ce.synth.world import write_video


def peak_hz(window, s=MelSettings()):
    """Centre frequency of the strongest mel band in a window's middle column."""
    edges = 700.0 * (10 ** (np.linspace(2595 * np.log10(1 + s.f_min / 700), 2595 * np.log10(1 + 8000 / 700),
                                        s.n_mels + 2) / 2595) - 1)
    return edges[1:-1][int(window[0, :, window.shape[-1] // 2].argmax())]


def test_tone_change_is_found_at_the_right_frames(tmp_path):
    sr, fps = 16000, 25
    t = np.arange(2 * sr) / sr
    audio = 0.5 * np.sin(2 * np.pi * np.where(t < 1.0, 300.0, 1200.0) * t)
    frames = [np.full((64, 64, 3), 128, np.uint8)] * (2 * fps)
    write_video(tmp_path / "tone.mp4", frames, fps, 64, 64, audio, sr)
    track = read_audio(tmp_path / "tone.mp4")
    assert abs(len(track.samples) - 2 * sr) < 0.1 * sr and np.abs(track.samples).max() > 0.3
    windows = video_frame_windows(tmp_path / "tone.mp4", np.arange(1, 2 * fps + 1), width=32)
    assert windows.shape == (50, 1, 64, 32)
    assert abs(peak_hz(windows[10]) - 300) < 60 and abs(peak_hz(windows[40]) - 1200) < 150
    # a video without audio: the branch abstains
    write_video(tmp_path / "silent.mp4", frames[:5], fps, 64, 64, None)
    assert read_audio(tmp_path / "silent.mp4") is None
    assert video_frame_windows(tmp_path / "silent.mp4", np.arange(1, 6)) is None


def test_windows_past_the_ends_are_padded_with_the_floor():
    s = MelSettings()
    spec = log_mel(np.random.default_rng(0).normal(0, 0.1, s.sample_rate // 2), s)  # half a second
    windows = frame_windows(spec, np.array([0.0, 0.25, 0.49, 3.0]), width=20, s=s)
    floor = float(np.log(LOG_FLOOR))
    assert windows.shape == (4, 1, s.n_mels, 20)
    assert (windows[0, 0, :, :10] == floor).all() and (windows[0, 0, :, 10:] > floor).all()
    assert (windows[1] > floor).all()
    assert (windows[2, 0, :, -5:] == floor).all()  # runs past the end
    assert (windows[3] == floor).all()  # entirely after the audio
    bank = mel_filterbank(s)
    assert bank.shape == (64, 201) and (bank >= 0).all() and (bank.sum(1) > 0).all()


def _pitch_hz(samples, sr=16000):
    """Fundamental of the loudest 50 ms stretch: the autocorrelation peak between 80 and 300 Hz."""
    hop = sr // 20
    chunks = samples[: len(samples) // hop * hop].reshape(-1, hop)
    loudest = chunks[np.argmax((chunks ** 2).sum(1))]
    ac = np.correlate(loudest, loudest, "full")[hop - 1:]
    lags = np.arange(sr // 300, sr // 80)
    return sr / lags[np.argmax(ac[lags])]


def test_synthetic_voices_belong_to_speakers_not_classes():
    from abaw_ce.synth.voice import Voice, speech

    fps, n = 25, 250
    envelope = np.ones(n, np.float32)
    rng = np.random.default_rng(0)
    voices = [Voice.random(rng) for _ in range(2)]
    # the pitch follows the speaker whatever the class; the class moves it only a little
    for voice in voices:
        for name in ("Happily_Surprised", "Sadly_Angry"):
            audio = speech(voice, [name] * n, envelope, fps, np.random.default_rng(1))
            assert abs(_pitch_hz(audio) - voice.pitch) < 0.2 * voice.pitch
    # people pause: a good part of every clip is near silence
    audio = speech(voices[0], ["Angrily_Surprised"] * n, envelope, fps, np.random.default_rng(2))
    frames = np.abs(audio[: len(audio) // 400 * 400].reshape(-1, 400)).max(1)
    assert 0.15 < (frames < 0.1).mean() < 0.85
    # arousal shifts loudness on average (partly: single segments overlap)
    def loudness(name, seed):
        clip = speech(voices[1], [name] * n, envelope, fps, np.random.default_rng(seed))
        return float(np.sqrt((clip ** 2).mean()))
    agitated = [loudness("Angrily_Surprised", s) for s in range(12)]
    subdued = [loudness("Sadly_Fearful", s) for s in range(12)]
    assert np.mean(agitated) > np.mean(subdued) and max(subdued) > min(agitated)


def test_tiny_world_test_set_has_three_segments_of_every_class(tiny_world):
    truth = challenge_file.read_submission(tiny_world / "test_ground_truth" / "ground_truth.txt")
    assert truth["video"].nunique() >= 8
    starts = truth[(truth["label"] != truth["label"].shift()) | (truth["video"] != truth["video"].shift())]
    assert starts["label"].value_counts().reindex(range(7), fill_value=0).min() >= 3


def test_frame_audio_samples_cut_shifted_windows_and_standardise():
    import pandas as pd
    import torch

    from abaw_ce.audio import FrameAudioSamples, FrameClock, SpectrogramTransform, spectrogram_stats

    s = MelSettings(n_mels=16)
    spectrogram = torch.arange(16 * 300, dtype=torch.float32).reshape(16, 300)
    table = pd.DataFrame({"path": ["v.mp4", "v.mp4"], "frame": [1, 26]})
    clock = FrameClock(np.arange(50) / 25.0, 25.0)
    samples = FrameAudioSamples(table, np.eye(2, 6), np.ones((2, 6)), {"v.mp4": spectrogram}, {"v.mp4": clock},
                                width=10, shift=3, s=s)
    item = samples[1]  # frame 26 = 1.0 s = column 100
    assert item["image"].shape == (1, 16, 16) and item["target"][1] == 1
    assert item["image"][0, 0, 8].item() == 100.0  # the middle of the 16-column span
    mean, std = spectrogram_stats({"v.mp4": spectrogram})
    centre = SpectrogramTransform(10, mean, std, train=False)(item["image"])["image"]
    assert centre.shape == (1, 16, 10)
    assert torch.allclose(centre * std + mean, item["image"][..., 3:13])
    torch.manual_seed(0)
    starts = set()
    for _ in range(30):
        shifted = SpectrogramTransform(10, 0.0, 1.0, train=True, freq_mask=0)(item["image"])["image"]
        starts.add(int(shifted[0, 0, 0].item()) - 92)
    assert starts <= set(range(7)) and len(starts) > 3  # random offsets within the margin
    masked = SpectrogramTransform(10, 0.0, 1.0, train=True, freq_mask=16)
    assert any((masked(item["image"])["image"] == 0).all(dim=-1).any() for _ in range(10))
    assert np.isclose(samples[0]["image"][0, 0, 0].item(), np.log(LOG_FLOOR))  # frame 1: starts before 0 s


def test_frames_are_heard_at_their_timestamps_in_variable_rate_video_with_late_sound(tmp_path):
    """Frames 20 ms apart, then 100 ms apart; the sound starts 0.5 s in, at 300 Hz, and turns to 1200 Hz at
    1.2 s. A frame's window must hold what was heard at its own timestamp, not at (k - 1) / fps."""
    sr = 16000
    times = np.concatenate([np.arange(20) * 0.02, 0.48 + np.arange(20) * 0.1])
    heard = np.arange(2 * sr) / sr  # the sound's own clock: it plays from 0.5 s to 2.5 s of the video
    sound = 0.5 * np.sin(2 * np.pi * np.where(heard + 0.5 < 1.2, 300.0, 1200.0) * heard)
    frames = [np.full((64, 64, 3), 128, np.uint8)] * len(times)
    write_video(tmp_path / "vfr.mp4", frames, 25, 64, 64, sound, sr, frame_times=times, audio_start=0.5)
    from abaw_ce.video import frame_times

    stamps, _ = frame_times(tmp_path / "vfr.mp4")
    np.testing.assert_allclose(stamps, times, atol=1e-3)
    windows = video_frame_windows(tmp_path / "vfr.mp4", np.arange(1, len(times) + 1), width=8)
    floor = float(np.log(LOG_FLOOR))
    for k, t in enumerate(times):
        centre = windows[k, 0, :, 4]
        if t < 0.45:  # before the sound starts
            assert float(centre.max()) < floor + 8, (k, t)
        elif 0.6 <= t <= 1.1:
            assert abs(peak_hz(windows[k]) - 300) < 60, (k, t)
        elif t >= 1.3:
            assert abs(peak_hz(windows[k]) - 1200) < 150, (k, t)
