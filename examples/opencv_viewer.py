"""Show a live Odyssey stream in an OpenCV window; type to interact.

The window loop pulls the newest frame with ``get_latest_frame()`` (no
callbacks, no queues: if drawing is slow, frames are skipped, never delayed).
Keys: ``q``/Esc quits, ``1``–``3`` send canned interactions, ``Space`` opens a
prompt in the terminal. Frames are asked for in BGR (``frame_format="bgr24"``),
OpenCV's own channel order, so nothing is converted per frame.

Needs OpenCV with GUI support (``pip install opencv-python``, not the
``-headless`` wheel) and a display. Runs against the embedded local server by
default; set ODYSSEY_API_KEY (and optionally ODYSSEY_API_URL) for the real
service::

    python examples/opencv_viewer.py "A lighthouse on a cliff at dusk"
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
from typing import Any

from _common import open_client

WINDOW = "odyssey"

CANNED = {
    ord("1"): "A storm rolls in from the sea",
    ord("2"): "The lighthouse beam switches on",
    ord("3"): "A ship passes on the horizon",
}


def open_window() -> Any:
    """Import OpenCV and open the window, or exit with what is missing and how to get it.

    Checked before anything connects. The build check comes first: the
    ``-headless`` wheel has no GUI at all, and some GUI back-ends abort the
    whole process when there is no display to open.
    """
    try:
        import cv2
    except ImportError:
        sys.exit("opencv_viewer: OpenCV is not installed: pip install opencv-python")
    if re.search(r"^\s*GUI:\s*NONE\s*$", cv2.getBuildInformation(), re.MULTILINE):
        sys.exit("opencv_viewer: this OpenCV has no GUI support (the opencv-python-headless "
                 "wheel): pip uninstall opencv-python-headless && pip install opencv-python")
    if sys.platform.startswith("linux") and not (
        os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")
    ):
        sys.exit("opencv_viewer: no display (DISPLAY is not set): run it in a desktop session")
    try:
        cv2.namedWindow(WINDOW, cv2.WINDOW_NORMAL)
    except cv2.error as exc:
        sys.exit(f"opencv_viewer: OpenCV cannot open a window here: {exc.err}")
    return cv2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("prompt", nargs="?", default="A lighthouse on a cliff at dusk")
    parser.add_argument("--portrait", action="store_true")
    args = parser.parse_args()
    cv2 = open_window()

    with open_client(frame_format="bgr24") as client:
        client.connect()
        client.start_stream(args.prompt, portrait=args.portrait)
        busy = threading.Lock()  # one interaction in flight at a time

        def interact(prompt: str) -> None:
            # interact() blocks until acknowledged: run it off the UI thread.
            def run() -> None:
                with busy:
                    print("acknowledged:", client.interact(prompt))

            threading.Thread(target=run, name="viewer-interact", daemon=True).start()

        while True:
            frame = client.get_latest_frame(timeout=5.0)
            try:
                cv2.imshow(WINDOW, frame.data)  # shown before the slot is released
            finally:
                frame.release()
            key = cv2.waitKey(1) & 0xFF
            if key in (ord("q"), 27) or cv2.getWindowProperty(WINDOW, cv2.WND_PROP_VISIBLE) < 1:
                break
            if key in CANNED and not busy.locked():
                interact(CANNED[key])
            elif key == ord(" ") and not busy.locked():
                prompt = input("prompt> ").strip()
                if prompt:
                    interact(prompt)
        cv2.destroyAllWindows()
        client.end_stream()
    return 0


if __name__ == "__main__":
    sys.exit(main())
