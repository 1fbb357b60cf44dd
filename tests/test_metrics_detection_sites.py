"""Where detections fall (custom.metrics.detection_sites): the site rule on hand-built volumes."""
import numpy as np
import pytest

from custom.metrics.detection_sites import DetectionSite, detection_sites, regions_touched, site_counts

SHAPE = (8, 20, 20)


def _volumes():
    prediction = np.zeros(SHAPE, dtype=np.float32)
    reference = np.zeros(SHAPE, dtype=np.uint8)
    a = np.zeros(SHAPE, dtype=bool)
    b = np.zeros(SHAPE, dtype=bool)
    # detection 1 (10 voxels, row 1): touches the reference at one voxel
    prediction[1, 1, 0:10] = 0.9
    reference[1, 1, 9:12] = 1
    # detection 2 (10 voxels, row 5): 3 voxels in region a, 5 in region b
    prediction[4, 5, 0:10] = 0.8
    a[4, 5, 0:3] = True
    b[4, 5, 3:8] = True
    # detection 3 (10 voxels, row 10): 1 voxel in a, 6 in b
    prediction[4, 10, 0:10] = 0.7
    a[4, 10, 0] = True
    b[4, 10, 4:10] = True
    # detection 4 (4 voxels, row 15): in no region; and a voxel below the threshold
    prediction[6, 15, 0:4] = 0.6
    prediction[6, 18, 18] = 0.3
    return prediction, reference, {"a": a, "b": b}


def test_first_region_with_enough_share_is_the_site():
    prediction, reference, regions = _volumes()
    sites = detection_sites(prediction, reference, regions, threshold=0.5, min_share=0.2)
    assert [s.voxels for s in sites] == [10, 10, 10, 4]
    assert [s.matched for s in sites] == [True, False, False, False]
    # 3/10 in a is enough although b holds more: the order of the regions decides
    assert sites[1].site == "a" and sites[1].share == pytest.approx(0.3)
    # 1/10 in a is not: b, with 6/10
    assert sites[2].site == "b" and sites[2].share == pytest.approx(0.6)
    assert sites[3].site == "elsewhere" and np.isnan(sites[3].share)
    assert sites[0].site == "elsewhere"
    # a larger share moves detection 2 on to b; the regions' order reversed makes b win at once
    assert detection_sites(prediction, reference, regions, min_share=0.4)[1].site == "b"
    assert detection_sites(prediction, reference, {"b": regions["b"], "a": regions["a"]})[1].site == "b"
    assert detection_sites(prediction, reference, regions, threshold=0.75)[-1].voxels == 10  # detections 3 and 4 drop out
    assert len(detection_sites(prediction, reference, regions, threshold=0.75)) == 2


def test_site_counts_split_true_and_false_detections():
    prediction, reference, regions = _volumes()
    sites = detection_sites(prediction, reference, regions, fallback="outside")
    assert site_counts(sites) == {"a": 1, "b": 1, "outside": 1}
    assert site_counts(sites, matched=True) == {"outside": 1}
    assert site_counts([]) == {}
    assert detection_sites(np.zeros(SHAPE), reference, regions) == []
    assert isinstance(sites[0], DetectionSite)


def test_regions_touched_lists_the_instances_a_detection_reaches():
    prediction, _, _ = _volumes()
    instances = np.zeros(SHAPE, dtype=np.int16)
    instances[1, 1, 9] = 2  # under detection 1
    instances[6, 18, 18] = 3  # under the voxel below the threshold
    instances[0, 0, 0] = 1  # under nothing
    assert regions_touched(prediction, instances).tolist() == [2]
    assert regions_touched(prediction, instances, threshold=0.2).tolist() == [2, 3]
    with pytest.raises(ValueError, match="same grid"):
        regions_touched(prediction, instances[:, :10])


def test_bad_inputs_are_refused():
    prediction, reference, regions = _volumes()
    with pytest.raises(ValueError, match="min_share"):
        detection_sites(prediction, reference, regions, min_share=0.0)
    with pytest.raises(ValueError, match="same 3D grid"):
        detection_sites(prediction, reference[:, :10], regions)
    with pytest.raises(ValueError, match="region 'a'"):
        detection_sites(prediction, reference, {"a": regions["a"][:, :10]})
    bad = prediction.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        detection_sites(bad, reference, regions)
