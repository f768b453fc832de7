"""Reading data sources, not layers: path lookup, LMDB/LevelDB readers (``db``), Caffe's DataTransformer and image
decoding (``transformer``), SSD annotations and their augmentation (``annotation``, ``annoset``), and the bundled
MNIST digits (``data/mnist`` in the repository). The layers that use them are in ``layers/data_layers.py``."""
from .mnist import bundled_mnist_dir, write_mnist_hdf5  # noqa: F401
from .paths import add_search_dir, remove_search_dir, resolve_path, search_dirs  # noqa: F401
