"""A pygame game loop that draws the live Odyssey stream as its background.

The loop runs at its own frame rate (60 fps here) and, each iteration, takes
the *latest* video frame with ``get_latest_frame(timeout=0)`` — it never waits
for the network: when no new frame arrived it simply redraws the last one.
Arrow keys steer the world: every key press becomes an ``interact()`` sent on a
helper thread, so the game loop never blocks on the network either.

Works headless (``SDL_VIDEODRIVER=dummy``), e.g. to record frames on a server::

    pip install pygame
    python examples/pygame_loop.py
    SDL_VIDEODRIVER=dummy python examples/pygame_loop.py --seconds 5 --small

Runs against the embedded local server by default; set ODYSSEY_API_KEY (and
optionally ODYSSEY_API_URL) for the real service.
"""

from __future__ import annotations

import argparse
import threading
import time

import pygame  # type: ignore[import-not-found, unused-ignore]  # pip install pygame
from _common import open_client

from odyssey_sync.errors import OdysseyTimeoutError

KEY_PROMPTS = {
    pygame.K_LEFT: "The camera turns left",
    pygame.K_RIGHT: "The camera turns right",
    pygame.K_UP: "The camera flies forward",
    pygame.K_DOWN: "The camera rises above the clouds",
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=None, help="quit after this long")
    parser.add_argument("--small", action="store_true", help="small frames (local server only)")
    args = parser.parse_args()

    pygame.init()
    try:
        with open_client(small=args.small) as client:
            client.connect()
            client.start_stream("A floating island above a sea of clouds", portrait=False)
            first = client.get_latest_frame(timeout=10.0)
            width, height = first.width, first.height
            first.release()
            screen = pygame.display.set_mode((width, height))
            pygame.display.set_caption("odyssey · arrows steer · Esc quits")
            surface = pygame.Surface((width, height))
            clock = pygame.time.Clock()
            in_flight = threading.Lock()
            drawn = loops = 0
            last_seq = -1
            start = time.monotonic()
            running = True
            while running:
                for event in pygame.event.get():
                    if event.type == pygame.QUIT or (
                        event.type == pygame.KEYDOWN and event.key == pygame.K_ESCAPE
                    ):
                        running = False
                    elif (
                        event.type == pygame.KEYDOWN
                        and event.key in KEY_PROMPTS
                        and in_flight.acquire(blocking=False)  # one interaction at a time
                    ):
                        prompt = KEY_PROMPTS[event.key]

                        def send(p: str = prompt) -> None:
                            try:
                                client.interact(p)
                            finally:
                                in_flight.release()

                        threading.Thread(target=send, name="game-interact", daemon=True).start()
                try:
                    frame = client.get_latest_frame(timeout=0)  # never wait in a game loop
                except OdysseyTimeoutError:
                    frame = None
                if frame is not None:
                    try:
                        if frame.seq != last_seq and frame.width == width:
                            # pygame wants (W, H, 3): a transposed view, copied once here.
                            pygame.surfarray.blit_array(surface, frame.data.swapaxes(0, 1))
                            last_seq = frame.seq
                            drawn += 1
                    finally:
                        frame.release()
                screen.blit(surface, (0, 0))
                pygame.display.flip()
                clock.tick(60)
                loops += 1
                if args.seconds is not None and time.monotonic() - start >= args.seconds:
                    running = False
            client.end_stream()
        print(f"game loops={loops} video frames drawn={drawn}")
    finally:
        pygame.quit()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
