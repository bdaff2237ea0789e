"""Inductor's vector-ISA check is run once per machine and recorded (lowering/vec_isa.py)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
import torch
from torch._inductor import config

from optcompile.lowering import vec_isa


def _has_key() -> bool:
    try:
        vec_isa.machine_key()
    except Exception:  # no C++ compiler here
        return False
    return True


pytestmark = pytest.mark.skipif(
    not (vec_isa._applies() and _has_key()),
    reason="the recorded check is for Linux on x86-64 with a C++ compiler",
)


@pytest.fixture
def unset_switch():
    """Inductor's switch as a fresh process has it (unset), restored afterwards."""
    with config.patch({"cpp.vec_isa_ok": None}):
        yield


def _counting(verdict: bool) -> tuple[list[int], object]:
    calls: list[int] = []

    def check() -> bool:
        calls.append(1)
        return verdict

    return calls, check


def test_first_process_checks_and_records_later_ones_trust_the_record(tmp_path, unset_switch):
    calls, check = _counting(True)
    assert vec_isa.settle(tmp_path, check) is True
    assert config.cpp.vec_isa_ok is True and calls == [1]
    config.cpp.vec_isa_ok = None  # a new process
    assert vec_isa.settle(tmp_path, check) is True
    assert config.cpp.vec_isa_ok is True and calls == [1]  # not checked again


def test_a_failed_check_leaves_inductor_checking_every_time(tmp_path, unset_switch):
    calls, check = _counting(False)
    assert vec_isa.settle(tmp_path, check) is False
    assert vec_isa.settle(tmp_path, check) is False
    assert config.cpp.vec_isa_ok is None and calls == [1]


def test_the_users_own_setting_is_left_alone(tmp_path):
    calls, check = _counting(True)
    with config.patch({"cpp.vec_isa_ok": False}):
        assert vec_isa.settle(tmp_path, check) is False
        assert config.cpp.vec_isa_ok is False and calls == []


def test_another_compiler_or_torch_is_checked_anew(tmp_path, unset_switch, monkeypatch):
    calls, check = _counting(True)
    vec_isa.settle(tmp_path, check)
    monkeypatch.setattr(torch, "__version__", torch.__version__ + ".other")
    config.cpp.vec_isa_ok = None
    vec_isa.settle(tmp_path, check)
    assert calls == [1, 1]
    assert len(list((tmp_path / vec_isa.MARKER_DIR).glob("*.json"))) == 2


def test_a_corrupt_record_is_checked_again(tmp_path, unset_switch):
    marker = tmp_path / vec_isa.MARKER_DIR / f"{vec_isa.machine_key()}.json"
    marker.parent.mkdir()
    marker.write_text("{truncated")
    calls, check = _counting(True)
    assert vec_isa.settle(tmp_path, check) is True and calls == [1]


def test_inductor_skips_its_test_builds_in_a_process_after_the_first(tmp_path):
    """Real check in one process, then a new one on the same cache picks its ISA with the
    base test build forbidden (AVX-512's extension checks, bf16/VNNI/AMX, still run)."""
    run_real_check = "from optcompile.lowering import cache; cache.configure()"
    forbid_base_build = textwrap.dedent(
        """
        from torch._inductor import cpu_vec_isa
        from optcompile.lowering import cache
        def forbidden(self, code):
            if code == cpu_vec_isa.VecISA._avx_code:
                raise AssertionError("the base ISA test build ran again")
            return original(self, code)
        original = cpu_vec_isa.VecISA.check_build
        cpu_vec_isa.VecISA.check_build = forbidden
        cache.configure()
        print(cpu_vec_isa.pick_vec_isa())
        """
    )
    env = dict(os.environ, OPTCOMPILE_CACHE_DIR=str(tmp_path))
    env.pop("TORCHINDUCTOR_VEC_ISA_OK", None)
    for code in (run_real_check, forbid_base_build):
        out = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert out.returncode == 0, out.stderr
        if code is run_real_check and "false" in next(tmp_path.glob("vec_isa/*.json")).read_text():
            pytest.skip("an advertised ISA does not build here: Inductor checks every time")
    assert out.stdout.strip() not in ("", "INVALID_VEC_ISA")
