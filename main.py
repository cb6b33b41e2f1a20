"""Trains the paper's binary MLP on scikit-learn's 8x8 digits with both methods and
prints both test accuracies. (The experiments issue replaces this with configs.)"""
from absl import app, flags

flags.DEFINE_integer("epochs", 40, "Training epochs for each method.")
flags.DEFINE_integer("seed", 0, "Random seed.")
FLAGS = flags.FLAGS


def main(argv):
  del argv
  from bnn import digits
  for method in ("standard", "proposed"):
    accuracy = digits.train_and_evaluate(method, epochs=FLAGS.epochs, seed=FLAGS.seed)
    print(f"{method:>9}: digits test accuracy {accuracy:.2%}")


if __name__ == "__main__":
  app.run(main)
