"""Install the pack's offline face detector into the python that runs this file (ComfyUI's).

ComfyUI-Manager runs ``install.py`` after ``pip install -r requirements.txt`` when it installs or
updates a pack; by hand: ``python ComfyUI/custom_nodes/ComfyUI-AnyTalker/install.py`` with ComfyUI's
python. It installs MediaPipe 0.10.21, the last release whose wheel carries the face-detection and
face-mesh models (newer ones download them at run time), with ``--no-deps``, since its declared
dependencies replace opencv-python-headless with opencv-contrib and pull in jax, plus the five
packages it really imports. Nothing happens when a working MediaPipe 0.10.21 is already there.
"""

from __future__ import annotations

import subprocess
import sys

MEDIAPIPE = "mediapipe==0.10.21"
MEDIAPIPE_IMPORTS = ["absl-py", "attrs", "flatbuffers", "protobuf<5", "matplotlib"]


def mediapipe_ready() -> bool:
    probe = ("import sys, pathlib, mediapipe; from mediapipe.python.solutions import face_detection; "
             "model = pathlib.Path(mediapipe.__file__).parent / 'modules/face_detection/face_detection_full_range_sparse.tflite'; "
             "sys.exit(mediapipe.__version__ != '0.10.21' or not model.is_file())")
    return subprocess.run([sys.executable, "-c", probe], capture_output=True, check=False).returncode == 0


def main() -> int:
    if mediapipe_ready():
        print("ComfyUI-AnyTalker: mediapipe 0.10.21 is installed")
        return 0
    pip = [sys.executable, "-m", "pip", "install"]
    for args in (["--no-deps", MEDIAPIPE], MEDIAPIPE_IMPORTS):
        if subprocess.run(pip + args, check=False).returncode != 0:
            print(f"ComfyUI-AnyTalker: `pip install {' '.join(args)}` failed; face detection needs it "
                  f"(or install insightface + onnxruntime for the reference detector)", file=sys.stderr)
            return 1
    if not mediapipe_ready():
        print("ComfyUI-AnyTalker: mediapipe 0.10.21 was installed but does not import", file=sys.stderr)
        return 1
    print("ComfyUI-AnyTalker: installed mediapipe 0.10.21 (offline face detection)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
