"""pytest's set-up for every test file, before any of them imports the project."""
import os

os.environ["TRITON_INTERPRET"] = "1"  # kernel.py's Triton kernels run on the CPU; read when triton is imported
SHARED = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "shared")  # offline copies beside the checkout
if os.path.isdir(os.path.join(SHARED, "tiktoken_cache")):
    os.environ.setdefault("TIKTOKEN_CACHE_DIR", os.path.join(SHARED, "tiktoken_cache"))
