from ad_example.gaussian import GaussianPatchDetector
from adcore.testing import check_detector


def test_gaussian_patch_detector_conforms():
    report = check_detector(lambda: GaussianPatchDetector(input_size=64))
    assert report.ok and "pasted defect scores higher" in report.passed
