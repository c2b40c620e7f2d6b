"""Train a MobileNet from scratch on scikit-learn's digits with optax; checkpointed every epoch, resumable.

    python examples/train_digits.py --out runs/digits          # ~2.5 min on 2 CPU cores, ~98.6% test accuracy
    python examples/train_digits.py --out runs/digits          # again: resumes from the last checkpoint

Same as `flax-dsconv train`. Writes runs/digits/checkpoints/, history.json and curves.png.
"""

import argparse

from flax_dsconv.tools.digits import train_digits

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/digits")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--width", type=float, default=0.5)
    args = parser.parse_args()
    history = train_digits(args.out, epochs=args.epochs, width=args.width)
    print(f"final test accuracy {history[-1]['test_accuracy']:.4f}")
