"""``accelerate launch -m loracam.train DATASET ...``: the train command under accelerate (multi-GPU/process)."""

from loracam.cli import train_main

if __name__ == "__main__":
    train_main()
