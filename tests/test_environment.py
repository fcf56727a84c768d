"""Machine detection and the fit table."""

from dataclasses import replace

from helpers import environment
from helpers.environment import GPU
from helpers.memory.summaries import fit_table, fits_fp16
from helpers.opt.sizes import SIZES

T4 = GPU(0, "Tesla T4", 15 * 1024**3, 15 * 1024**3, (7, 5))


def test_detect_reports_this_machine():
    env = environment.detect()
    assert env.cpu_count >= 1 and env.ram_total_bytes >= env.ram_available_bytes > 0
    assert env.torch and env.transformers and not env.on_colab
    text = environment.report(env)
    assert "RAM" in text and "torch" in text


def test_fit_table_on_a_t4_matches_the_fp16_arithmetic():
    env = replace(environment.detect(), gpus=(T4,), ram_available_bytes=12 * 1024**3)
    rows = {r["model"]: r for r in fit_table(env)}
    fits = {name: row["fits Tesla T4"] for name, row in rows.items()}
    # OPT-6.7B in fp16 (12.4 GiB + 2 GiB cache at 2048 + 1 GiB headroom) fits 15 GiB; 13B does not.
    assert fits == {"opt-125m": True, "opt-350m": True, "opt-1.3b": True, "opt-2.7b": True, "opt-6.7b": True,
                    "opt-13b": False, "opt-30b": False, "opt-66b": False}
    assert rows["opt-1.3b"]["fits RAM in fp32 (CPU)"] and not rows["opt-2.7b"]["fits RAM in fp32 (CPU)"]  # 9.9 GiB + cache
    assert fits_fp16(SIZES["opt-6.7b"], T4.total_bytes) and not fits_fp16(SIZES["opt-13b"], T4.total_bytes)


def test_fit_table_without_a_gpu_says_so():
    env = replace(environment.detect(), gpus=())
    assert all(row["fits a GPU"] == "no GPU" for row in fit_table(env))
