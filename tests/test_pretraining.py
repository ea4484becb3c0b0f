"""The pretraining engine, its optimiser schedule, and the saved backbone that model.weights takes."""

import json
import math

import pytest
import torch

from thyro.config import load_config
from thyro.model.models import build_model
from thyro.model.pretraining import make_optimizer, pretrain_card, pretrain_one_epoch, save_backbone
from thyro.model.ssl import SimSiam
from thyro.model.weights import WeightsError, pretrained_summary


def card_for(model, distinct_images=1):
    return pretrain_card(method="simsiam", backbone=model.backbone_name, epochs=1, steps=2,
                         distinct_images=distinct_images, image_size=32, preset={}, views={}, final_loss=-0.5)


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    torch.manual_seed(0)
    m = SimSiam("resnet18", proj_dim=16, pred_dim=8)
    with torch.no_grad():   # distinctive values, BN buffers included, so a silent re-init would show
        for t in m.trunk.state_dict().values():
            if t.is_floating_point():
                t.add_(0.1)
    folder = str(tmp_path_factory.mktemp("ssl") / "out")
    save_backbone(folder, m, card_for(m, distinct_images=2))
    return folder, m


def test_pretrain_one_epoch_counts_and_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    m = SimSiam("resnet18", proj_dim=32, pred_dim=8)
    cfg = load_config(None, [{"pretrain": {"epochs": 1, "lr": 0.05}}]).pretrain
    opt, sched = make_optimizer(m, cfg, steps_per_epoch=1000)
    v1, v2 = torch.randn(8, 3, 32, 32), torch.randn(8, 3, 32, 32)
    seen = []
    r = pretrain_one_epoch(m, [(v1, v2)] * 6, opt, "cpu", on_step=lambda s, rec: seen.append((s, rec["loss"])))
    assert (r["steps"], r["images"]) == (6, 48) and [s for s, _ in seen] == list(range(1, 7))
    assert all(math.isfinite(x) for _, x in seen) and r["images_per_s"] > 0
    assert seen[-1][1] < seen[0][1]      # the same pair, six steps: the views are pulled together
    assert r["loss"] == pytest.approx(sum(x for _, x in seen) / 6)


def test_bf16_and_channels_last_run_finite():
    torch.manual_seed(0)
    m = SimSiam("resnet18", proj_dim=16, pred_dim=8).to(memory_format=torch.channels_last)
    cfg = load_config(None, [{"pretrain": {"optimizer": "adamw", "lr": 1e-3}}]).pretrain
    opt, _ = make_optimizer(m, cfg)
    r = pretrain_one_epoch(m, [(torch.randn(4, 3, 32, 32), torch.randn(4, 3, 32, 32))] * 2, opt, "cpu",
                           precision="bf16", channels_last=True)
    assert math.isfinite(r["loss"]) and r["steps"] == 2


def test_cosine_schedule_with_a_constant_rate_predictor():
    m = SimSiam("resnet18", proj_dim=16, pred_dim=8)
    cfg = load_config(None, [{"pretrain": {"epochs": 2, "lr": 0.1}}]).pretrain
    opt, sched = make_optimizer(m, cfg, steps_per_epoch=5)   # 10 steps in all
    lrs = []
    for _ in range(10):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx([0.1, 0.1])
    assert lrs[5][0] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 5 / 10)))   # = 0.05
    assert all(lr[1] == pytest.approx(0.1) for lr in lrs)
    assert isinstance(opt, torch.optim.SGD) and opt.defaults["momentum"] == 0.9


def test_saved_backbone_loads_into_the_classifier_with_every_trunk_tensor(saved):
    folder, m = saved
    want = m.backbone_state_dict()
    for weights in (folder, folder + "/backbone.pt"):
        got = build_model("resnet18", weights=weights).state_dict()
        assert set(got) - set(want) == {"fc.weight", "fc.bias"}
        assert all(torch.equal(got[k], v) for k, v in want.items())


def test_card_keeps_the_callers_distinct_count_and_says_research_only(saved):
    folder, _ = saved
    card = json.loads(open(f"{folder}/metadata.json").read())
    assert card["data"]["distinct_images"] == 2 and card["backbone"] == "resnet18"
    assert card["method"] == "simsiam" and "research use only" in card["intended_use"].lower()
    assert "not a medical device" in card["intended_use"].lower()
    assert {"torch", "torchvision", "thyro"} <= set(card["versions"])
    s = pretrained_summary(folder)
    assert (s["method"], s["backbone"], s["distinct_images"], s["steps"]) == ("simsiam", "resnet18", 2, 2)


def test_wrong_backbone_names_the_file_and_both_models(saved):
    folder, _ = saved
    with pytest.raises(WeightsError) as e:
        build_model("alexnet", weights=folder)
    msg = str(e.value)
    assert f"{folder}/backbone.pt" in msg and "'resnet18'" in msg and "'alexnet'" in msg


def test_backbone_on_s3(s3_endpoint):
    from thyro.data import storage

    storage.configure(s3_endpoint)
    torch.manual_seed(1)
    m = SimSiam("resnet18", proj_dim=16, pred_dim=8)
    uri = "s3://thyro-test/ssl-backbone"
    save_backbone(uri, m, card_for(m))
    got = build_model("resnet18", weights=uri).state_dict()
    assert torch.equal(got["conv1.weight"], m.trunk.conv1.weight.detach())
    assert pretrained_summary(uri)["backbone"] == "resnet18"


def test_fine_tuned_card_records_the_pretrained_backbone(saved, tiny_phantom, tmp_path):
    from thyro.model.training import train_run

    folder, m = saved
    cfg = load_config(None, [{"data": {"source": str(tiny_phantom)}, "preprocess": {"image_size": 32},
                              "model": {"weights": folder}, "train": {"epochs": 1, "batch_size": 8},
                              "eval": {"bootstrap": 0, "calibration_fraction": 0}}])
    card = train_run(cfg, str(tmp_path / "run"), log=lambda s: None).card
    pre = card["training"]["pretrained"]
    assert (pre["weights"], pre["method"], pre["backbone"], pre["distinct_images"]) == (folder, "simsiam",
                                                                                         "resnet18", 2)
