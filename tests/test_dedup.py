import numpy as np

from thyro.data.dedup import near_duplicate_groups


def test_chains_of_near_copies_share_a_group_and_distinct_images_do_not():
    rng = np.random.default_rng(0)
    a, b = rng.random(256) < 0.5, rng.random(256) < 0.5
    a1 = a.copy()
    a1[:10] ^= True          # 10 bits from a
    a2 = a1.copy()
    a2[10:20] ^= True        # 10 bits from a1, 20 from a: joined through a1 (single linkage)
    g = near_duplicate_groups(np.stack([a, a1, a2, b]), near_bits=12)
    assert g[0] == g[1] == g[2] and g[3] != g[0]
    # by hand: a and a2 alone differ by 20 bits > 12, so without a1 they are apart
    g2 = near_duplicate_groups(np.stack([a, a2]), near_bits=12)
    assert g2[0] != g2[1]
