"""timm integration: every config is a timm model with a pretrained cfg and a checkpoint filter."""
import pytest
import timm
import torch

import common
from common.exits import per_exit
import torch_impl  # noqa: F401  (registers the models)
from torch_impl.checkpoint import named_state_dict
from torch_impl.models import factory


def test_every_config_is_registered_in_timm():
    registered = set(timm.list_models())
    assert set(common.list_models()) <= registered
    assert set(timm.list_models(module="factory")) >= set(common.list_models())


@pytest.mark.parametrize("name", ["dvt_tiny_t2t", "dvt_tiny_deit_4exit", "t2t_vit_tiny"])
def test_timm_create_model_forward_and_cfg(name):
    cfg = common.get_config(name)
    model = timm.create_model(name)
    pc = model.pretrained_cfg
    assert pc["input_size"] == (cfg.in_chans, cfg.img_size, cfg.img_size)
    assert pc["mean"] == cfg.mean and pc["std"] == cfg.std and pc["crop_pct"] == cfg.crop_pct
    assert pc["interpolation"] == cfg.interpolation and pc["num_classes"] == cfg.num_classes
    assert "url" not in pc or not pc["url"]
    data_cfg = timm.data.resolve_data_config({}, model=model)
    assert data_cfg["input_size"] == (cfg.in_chans, cfg.img_size, cfg.img_size)
    out = model(torch.randn(1, cfg.in_chans, cfg.img_size, cfg.img_size))
    assert isinstance(out, tuple if cfg.num_exits > 1 else torch.Tensor)  # timm's contract for one exit
    assert len(per_exit(out)) == cfg.num_exits


def test_full_size_pretrained_cfg():
    pc = timm.models.get_pretrained_cfg("dvt_deit_small").to_dict()
    assert pc["input_size"] == (3, 224, 224) and pc["crop_pct"] == 0.9 and pc["interpolation"] == "bicubic"
    assert pc["classifier"] == ("exits.0.head", "exits.1.head", "exits.2.head")


def test_timm_overrides_reach_the_config():
    model = timm.create_model("dvt_tiny_t2t", num_classes=7, drop_path_rate=0.05)
    assert model.config.num_classes == 7 and model.config.drop_path_rate == 0.05


def test_timm_checkpoint_path_loads_reference_layout(tmp_path):
    torch.manual_seed(0)
    src = timm.create_model("dvt_tiny_t2t").eval()
    path = tmp_path / "ref.pth"
    torch.save({"model_state_dict": named_state_dict(src, "reference"), "flops": [0.1, 0.2, 0.3]}, path)
    for dst in (timm.create_model("dvt_tiny_t2t", checkpoint_path=str(path)),
                timm.create_model("dvt_tiny_t2t", pretrained=True, pretrained_cfg_overlay=dict(file=str(path)))):
        x = torch.randn(2, 3, 32, 32)
        with torch.no_grad():
            assert all(torch.equal(a, b) for a, b in zip(src(x), dst.eval()(x)))


def test_pretrained_without_weights_fails_loudly():
    with pytest.raises(RuntimeError, match="No pretrained weights"):
        timm.create_model("dvt_tiny_t2t", pretrained=True)


def test_checkpoint_filter_fn_maps_prefixed_reference_names():
    torch.manual_seed(0)
    model = timm.create_model("dvt_tiny_deit")
    sd = {f"module.{k}": v for k, v in named_state_dict(model, "reference").items()}
    assert set(factory.checkpoint_filter_fn(sd, model)) == set(model.state_dict())


def test_name_clash_with_another_timm_model_fails(monkeypatch):
    monkeypatch.setattr(factory, "list_models", lambda: ["resnet18", "dvt_tiny_t2t"])
    with pytest.raises(RuntimeError, match="resnet18"):
        factory.register_timm_models()
    monkeypatch.undo()
    assert factory.register_timm_models() == common.list_models()  # idempotent for our own names
