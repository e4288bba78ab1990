"""One recording of a conversation → one AUDIO per person + who speaks when (anytalker_core.audio.voices)."""

from __future__ import annotations

import json

import torch
from comfy_api.latest import io

from anytalker_core.constants import MAX_SPEAKERS as MAX_PEOPLE
from anytalker_core.errors import InputError

from . import _bridge as bridge

SEPARATION_FOLDER = "audio_separation"
NO_SEPARATION = "none"


def separation_options() -> list[str]:
    """``none`` + the files in ``models/audio_separation/`` (the folder is registered with ComfyUI here)."""
    import os

    import folder_paths

    folder_paths.add_model_folder_path(SEPARATION_FOLDER, os.path.join(folder_paths.models_dir, SEPARATION_FOLDER))
    return [NO_SEPARATION, *folder_paths.get_filename_list(SEPARATION_FOLDER)]


def _split_order(text: str) -> list[int] | None:
    text = (text or "").strip()
    if not text:
        return None
    try:
        return [int(v) for v in text.replace(" ", "").split(",") if v]
    except ValueError:
        raise InputError(f"order: expected comma-separated speaker numbers such as 2,1, got {text!r}") from None


class AnyTalkerSplitVoices(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="AnyTalkerSplitVoices",
            display_name="AnyTalker Split Voices",
            category="AnyTalker/audio",
            description="Finds who speaks when in one recording of a conversation (Silero VAD + GE2E speaker "
                        "embeddings) and returns one track per person: the recording gated to that person's turns "
                        "(overlapping speech goes to everyone in it; optionally separated by an Asteroid model "
                        "first). Connect speaker k to audio input k of "
                        "AnyTalker Audio Encode (the k-th face from the left), and speaking_intervals to AnyTalker "
                        "Score Video.",
            inputs=[
                io.Audio.Input("audio", tooltip="The whole conversation (any rate, mono or stereo)."),
                io.Int.Input("speakers", default=2, min=0, max=MAX_PEOPLE, step=1,
                             tooltip="How many people talk; 0 = estimate it."),
                io.Combo.Input("speaker_order", options=["first", "most"], default="first",
                               tooltip="Who is speaker 1: first = the first to speak, most = the one who speaks "
                                       "longest. Speaker k drives the k-th face from the left."),
                io.String.Input("order", default="", advanced=True,
                                tooltip="Manual override after the rule: speaker numbers in the order you want, "
                                        "e.g. 2,1 swaps two people. Empty = keep the rule's order."),
                io.Combo.Input("separation_model", options=separation_options(), default=NO_SEPARATION,
                               advanced=True,
                               tooltip="Optional Asteroid separation checkpoint in models/audio_separation (e.g. a "
                                       "ConvTasNet's pytorch_model.bin): each track becomes the separated source "
                                       "matched to that person, gated to their turns. none = gate the mix."),
            ],
            outputs=[
                *[io.Audio.Output(display_name=f"speaker{k + 1}",
                                  tooltip=f"Speaker {k + 1}'s track (silent if fewer people were found).")
                  for k in range(MAX_PEOPLE)],
                io.Int.Output(display_name="people", tooltip="Number of speakers (given or estimated)."),
                io.String.Output(display_name="speaking_intervals",
                                 tooltip='JSON {"left": [[start_s, end_s], ...], "right": ...} for two people, '
                                         'speaker1...speakerN otherwise (for AnyTalker Score Video).'),
            ],
        )

    @classmethod
    def execute(cls, audio, speakers: int = 2, speaker_order: str = "first", order: str = "",
                separation_model: str = NO_SEPARATION) -> io.NodeOutput:
        import folder_paths

        from anytalker_core.audio.separation import load_separator
        from anytalker_core.audio.voices import split_voices

        if not isinstance(audio, dict) or not isinstance(audio.get("waveform"), torch.Tensor) \
                or audio["waveform"].ndim != 3:
            raise InputError("audio: expected a ComfyUI AUDIO (a dict with 'waveform' [batch, channels, samples] "
                             "and 'sample_rate')")
        wave = audio["waveform"]
        if wave.shape[0] != 1:
            raise InputError(f"audio: holds a batch of {wave.shape[0]} clips; give one conversation")
        separator = None
        if separation_model and separation_model != NO_SEPARATION:
            separation_options()  # registers the folder
            path = folder_paths.get_full_path(SEPARATION_FOLDER, separation_model)
            if path is None:
                raise InputError(f"separation_model: '{separation_model}' is not in models/{SEPARATION_FOLDER}; "
                                 f"put an Asteroid checkpoint there or choose {NO_SEPARATION}")
            separator = load_separator(path, flag="separation_model")
        result = split_voices(wave[0], int(audio.get("sample_rate", 0) or 0), num_speakers=speakers or None,
                              speaker_order=speaker_order, order=_split_order(order), separate=separator,
                              progress=bridge.progress_callback(4), should_stop=bridge.interrupt_check)
        tracks = [{"waveform": torch.from_numpy(t).unsqueeze(0).contiguous(), "sample_rate": result.sample_rate}
                  for t in result.tracks]
        silent = {"waveform": torch.zeros_like(wave[:1].float()), "sample_rate": result.sample_rate}
        tracks += [silent] * (MAX_PEOPLE - len(tracks))
        return io.NodeOutput(*tracks, result.diarization.num_speakers, json.dumps(result.intervals))
