"""pytest's set-up for every test file, before any of them imports the project."""
import os
import shutil

import pytest

os.environ["TRITON_INTERPRET"] = "1"  # kernel.py's Triton kernels run on the CPU; read when triton is imported
HERE = os.path.dirname(os.path.abspath(__file__))
SHARED = os.path.join(HERE, "..", "shared")  # offline copies beside the checkout
if os.path.isdir(os.path.join(SHARED, "tiktoken_cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))

@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    """A data folder holding the one copy of tiny Shakespeare both datasets read: the shared
    offline copy, else downloaded once."""
    import train_teacher  # here, not above: the environment is set first
    d = tmp_path_factory.mktemp("data")
    src = os.path.join(SHARED, "data", "shakespeare", "input.txt")
    if not os.path.exists(src):
        src = os.path.join(HERE, "data", "shakespeare", "input.txt")
        if not os.path.exists(src):
            train_teacher.download(train_teacher.SHAKESPEARE_URL, src)
    os.makedirs(d / "shakespeare")
    shutil.copy(src, d / "shakespeare" / "input.txt")
    return str(d)
