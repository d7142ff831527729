"""The region-scale measurement (issue 11, variant 3): how many classifier pixels a painted region spans."""

import numpy as np

from models.experiment.region_scale import region_sides, upsampling_table


def square_mask(h, w, side):
    m = np.zeros((h, w), bool)
    m[10 : 10 + side, 20 : 20 + side] = True
    return m


def test_region_side_is_the_box_with_margin_over_the_shorter_side():
    # 40 px lesion, margin 0.15 -> 52 px box, in a 200 x 300 image: 52 / 200.
    assert np.allclose(region_sides([square_mask(200, 300, 40)], margin=0.15), [0.26])
    # A box larger than the image is clipped to it: never more than the whole image.
    assert region_sides([square_mask(100, 100, 95)], margin=0.15)[0] == 1.0


def test_upsampling_is_classifier_pixels_over_resolution():
    fractions = np.array([0.25, 0.5, 1.0])
    table = {
        (r["classifier_px"], r["resolution"]): r for r in upsampling_table(fractions, [96, 224], [64, 96])
    }
    assert table[96, 64]["median_region_px"] == 48.0 and table[96, 64]["median_upsampling"] == 0.75
    assert table[96, 64]["share_upsampled"] == round(1 / 3, 3)  # only the whole-image region, 96 px > 64
    assert table[96, 96]["share_upsampled"] == 0.0  # at the classifier's size nothing is ever upsampled
    assert table[224, 64]["p90_upsampling"] > table[224, 96]["p90_upsampling"] > 1
