"""`import embedstack` stays light; missing extras fail with the pip command that fixes them."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest


def _run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], capture_output=True, text=True, timeout=120)


def test_import_embedstack_does_not_import_frameworks() -> None:
    proc = _run(
        """
        import sys
        import embedstack, embedstack.interop, embedstack.providers, embedstack.registry
        import embedstack.providers.langchain  # duck-typed: needs no langchain_core
        m = embedstack.FakeEmbedding(embed_dim=4)
        m.get_text_embedding("x")
        roots = ("langchain_core", "langchain", "llama_index")
        loaded = sorted(n for n in sys.modules if n.split(".")[0] in roots)
        print(loaded)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_lazy_export_of_langchain_embedding() -> None:
    proc = _run(
        """
        import sys, embedstack
        cls = embedstack.LangchainEmbedding
        print(cls.__module__, cls.class_name(), "langchain_core" in sys.modules)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["embedstack.providers.langchain", "LangchainEmbedding", "False"]


def test_as_langchain_without_langchain_core_names_the_extra() -> None:
    proc = _run(
        """
        import sys
        sys.modules["langchain_core"] = None  # as if not installed
        sys.modules["langchain_core.embeddings"] = None
        import embedstack
        try:
            embedstack.FakeEmbedding(embed_dim=4).as_langchain()
        except ImportError as e:
            print("ERR", e)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "ERR" in proc.stdout
    assert "pip install 'embedstack[langchain]'" in proc.stdout
    assert "langchain-core" in proc.stdout


def test_as_llama_index_without_llama_index_names_the_extra() -> None:
    proc = _run(
        """
        import sys
        sys.modules["llama_index"] = None
        sys.modules["llama_index.core"] = None
        import embedstack
        try:
            embedstack.FakeEmbedding(embed_dim=4).as_llama_index()
        except ImportError as e:
            print("ERR", e)
        """
    )
    assert proc.returncode == 0, proc.stderr
    assert "pip install 'embedstack[llama-index]'" in proc.stdout
    assert "llama-index-core" in proc.stdout


def test_offline_guard_blocks_outbound_connections() -> None:
    """The autouse guard in conftest.py is what proves the llama-index tests download nothing."""
    import socket

    with pytest.raises(RuntimeError, match="offline"):
        socket.create_connection(("203.0.113.7", 443), timeout=1)
    with socket.socket() as sock, pytest.raises(RuntimeError, match="offline"):
        sock.connect(("203.0.113.7", 443))
