from .build import DATASETS, build_dataset, build_pair_loader, build_test_loader, build_train_loader  # noqa: F401
from .hoss import HOSS, PROTOCOLS, Protocol  # noqa: F401
from .records import OPTICAL, SAR, ChipRecord, DatasetError  # noqa: F401
