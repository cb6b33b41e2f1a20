"""Shared fixtures: the tiny MNIST-format dataset as IDX files, and prepared into a TFDS data_dir."""

import pytest

from tests.bnn.data.tiny_idx import write_tiny_idx


@pytest.fixture(scope="session")
def tiny_idx_dir(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tiny_idx")
    write_tiny_idx(directory)
    return directory


@pytest.fixture(scope="session")
def tiny_data_dir(tmp_path_factory, tiny_idx_dir):
    """A TFDS data_dir holding "mnist" prepared from the tiny IDX files (array_record)."""
    from bnn.data import builders

    data_dir = tmp_path_factory.mktemp("tfds")
    builders.prepare_idx_dataset("mnist", tiny_idx_dir, data_dir)
    return data_dir
