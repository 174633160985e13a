from .build import DATASETS, build_dataset, build_test_loader  # noqa: F401
from .hoss import HOSS, PROTOCOLS, Protocol  # noqa: F401
from .records import OPTICAL, SAR, ChipRecord, DatasetError  # noqa: F401
