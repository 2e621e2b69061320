"""Parameter counts pinned (built on the meta device: no memory) and re-derived by formula.

Exact figures (text projection from a 768-wide encoder, 4 latent channels, patch 2):
  expert XL/2, AdaLN-Single:            607,004,560  (paper: 605M)
  expert XL/2, per-block adaLN (DiT's): 824,642,704  (paper: ~826M)
  router B/2 (DiT-B/2, per-block adaLN, mean-pool head, K = 8): 129,528,584 (paper: 129M)
The 2.0M above 605M is about the size of the two-layer caption projection PixArt uses
(768 -> 1152 -> 1152: 2,214,144 parameters); with a single linear projection (885,888) the
total would be 605.7M. The per-block variant replaces the global t_block (7,969,536) and the
tables (29 x 6/2 x 1152) by 28 block MLPs Linear(1152, 6912) and a final Linear(1152, 2304).
"""
import pytest

from hddm_core.models import build_expert_model, build_router, expert_config, meta_parameter_count, router_config


def lin(i, o):
    return i * o + o


def expert_formula(d, depth, text=768, c=4, p=2, mlp_ratio=4.0, adaln="single"):
    mlp = int(d * mlp_ratio)
    block = lin(d, 3 * d) + lin(d, d)  # self-attention
    block += lin(d, d) + lin(d, 2 * d) + lin(d, d)  # cross-attention q, kv, proj
    block += lin(d, mlp) + lin(mlp, d)
    block += 6 * d if adaln == "single" else lin(d, 6 * d)
    total = depth * block + c * p * p * d + d + lin(256, d) + lin(d, d)  # patchify, time embedder
    total += lin(text, d) + lin(d, d) + text  # caption projection, learned null caption
    total += lin(d, p * p * c) + (2 * d if adaln == "single" else lin(d, 2 * d))  # final layer
    return total + (lin(d, 6 * d) if adaln == "single" else 0)  # the global t_block


def router_formula(d, depth, k, c=4, p=2):
    block = lin(d, 3 * d) + lin(d, d) + lin(d, 4 * d) + lin(4 * d, d) + lin(d, 6 * d)
    return depth * block + c * p * p * d + d + lin(256, d) + lin(d, d) + lin(d, 2 * d) + lin(d, k)


PINNED = {"XL/2": (607_004_560, 824_642_704), "L/2": (412_604_176, 559_398_672),
          "B/2": (118_961_680, 159_065_104), "S/2": (29_990_032, 40_014_736)}


@pytest.mark.parametrize("preset", list(PINNED))
def test_expert_counts_pinned_and_by_formula(preset):
    cfg = expert_config(preset)
    single = meta_parameter_count(build_expert_model, cfg)
    per_block = meta_parameter_count(build_expert_model, cfg.replace(adaln="per-block"))
    assert (single, per_block) == PINNED[preset]
    d, depth = cfg.hidden_size, cfg.depth
    assert single == expert_formula(d, depth)
    assert per_block == expert_formula(d, depth, adaln="per-block")


def test_xl2_is_near_the_papers_605m_and_826m():
    cfg = expert_config("XL/2")
    assert abs(meta_parameter_count(build_expert_model, cfg) - 605e6) < 0.005 * 605e6
    assert abs(meta_parameter_count(build_expert_model, cfg.replace(adaln="per-block")) - 826e6) < 0.005 * 826e6


def test_router_b2_is_near_129m():
    n = meta_parameter_count(build_router, router_config("B/2", 8))
    assert n == 129_528_584 == router_formula(768, 12, 8)
    assert abs(n - 129e6) < 0.005 * 129e6


def test_tiny_presets_fit_cpu_tests():
    assert 1_000_000 <= meta_parameter_count(build_expert_model, expert_config("tiny")) <= 3_000_000
    assert meta_parameter_count(build_expert_model, expert_config("tiny-16")) < 300_000
