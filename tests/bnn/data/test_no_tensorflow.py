"""The data path never imports TensorFlow: not even an attempt (TFDS swallows failed lazy imports)."""

import os
import subprocess
import sys
import textwrap
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]

SCRIPT = textwrap.dedent(
    """
    import sys

    attempts = []

    class RecordTensorFlowImports:
        # Records every attempt to import tensorflow, except `importlib.util.find_spec`
        # probes (etils asks whether TensorFlow is installed, without importing it).

        def find_spec(self, name, path=None, target=None):
            if name == "tensorflow" or name.startswith("tensorflow."):
                frame = sys._getframe(1)
                while frame is not None:
                    code = frame.f_code
                    if code.co_name == "find_spec" and "importlib" in code.co_filename and "util" in code.co_filename:
                        return None
                    frame = frame.f_back
                attempts.append(name)
            return None

    sys.meta_path.insert(0, RecordTensorFlowImports())

    from bnn import data
    from tests.bnn.data.tiny_idx import write_tiny_idx
    from pathlib import Path

    root = Path(sys.argv[1])
    (root / "idx").mkdir()
    write_tiny_idx(root / "idx")
    # Prepare (TFDS builder, array_record writer), read (data source), cache, batch, augment.
    train = data.make_dataset("mnist", split="train", batch_size=16, validation_size=10, augment="shift(0.15)+flip",
                              data_dir=root / "tfds", idx_dir=root / "idx", cache_dir=root / "cache")
    batch = next(train.iterator())
    assert batch["image"].shape == (16, 28, 28, 1), batch["image"].shape
    test = data.make_dataset("mnist", split="test", batch_size=16, data_dir=root / "tfds", in_memory=False)
    assert next(test.iterator())["image"].shape == (16, 28, 28, 1)
    assert not attempts, attempts
    assert "tensorflow" not in sys.modules
    print("OK")
    """
)


def test_loading_a_batch_does_not_import_tensorflow(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO), "JAX_PLATFORMS": "cpu"}
    result = subprocess.run(
        [sys.executable, "-c", SCRIPT, str(tmp_path)], cwd=REPO, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("OK"), result.stderr[-3000:]
    assert "Failed to import TensorFlow" not in result.stdout + result.stderr
