"""tools/benchmark.py helpers: the analytic MAC model, the ratio table, end-to-end job specs, the loader."""

from __future__ import annotations

import pytest

from tests.tool_loader import load_tool

report = load_tool("bench_report")
e2e = load_tool("bench_e2e")


def test_macs_match_the_known_resnet50_and_aspp_counts():
    plain, _ = report.macs("resnet50", 224, "layer1")
    assert plain / 1e9 == pytest.approx(3.86, abs=0.01)  # ResNet50's well-known 3.86 GMAC at 224 px
    total, executed = report.macs("resnet50_aspp", 224, "layer1", "dense")
    # 3 branches at 56x56x256, multiplier 4: depthwise 9*C*m + pointwise C*m*C per pixel.
    assert (total - plain) == 3 * 56 * 56 * (9 * 256 * 4 + 256 * 4 * 256)
    assert (executed - plain) == 3 * 56 * 56 * 9 * 256 * 256  # the composed dense kernels


def test_ratio_table_compares_pipelines_with_the_model_alone():
    rows = [{"impl": "keras", "model": "resnet50_aspp", "aspp_impl": "auto", "mode": "train", "img_per_s": 4000.0},
            {"impl": "e2e", "model": "resnet50_aspp", "aspp_impl": "auto", "mode": "train", "img_per_s": 3000.0,
             "label": "photos#1"}]
    table = report.ratio_table(rows)
    line = next(ln for ln in table.splitlines() if "e2e[photos#1]" in ln)
    assert line.split()[-1] == "0.75"


def test_e2e_specs_parse_and_need_a_flagfile():
    job = e2e.parse_e2e("flagfile=configs/uav75_photos.cfg;label=x;repeat=3;extra=--a=1 --b=2")
    assert job == {"flagfile": "configs/uav75_photos.cfg", "label": "x", "repo": "", "extra": ["--a=1", "--b=2"],
                   "repeat": 3}
    assert e2e.parse_e2e("flagfile=f.cfg", default_repeat=2)["repeat"] == 2
    with pytest.raises(ValueError, match="flagfile"):
        e2e.parse_e2e("label=x")
    assert e2e.flagfile_model("configs/uav75.cfg") == "resnet50_aspp"


def test_loader_rate_runs_the_photos_input_through_fit(tmp_path):
    from tests.photo_data import write_source

    write_source(tmp_path / "src", {"train": 2, "val": 1})
    flagfile = tmp_path / "f.cfg"
    flagfile.write_text(f"--data_source=photos\n--data_dir={tmp_path / 'src'}\n--crops_per_epoch=64\n"
                        "--crop_side=16,48\n--min_crack_pixels=20\n--val_tile=32\n")
    r = e2e.loader_rate(str(flagfile), 8, 32, 6, 2, False, [])
    assert r["impl"] == "loader" and r["img_per_s"] > 0 and r["workers"] == 2
    assert r["trainer_cpu_ms_per_batch"] > 0 and r["shared_memory"]
    piped = e2e.loader_rate(str(flagfile), 8, 32, 6, 2, True, ["--loader_shared_memory=false"])
    assert piped["processes"] and not piped["shared_memory"] and piped["img_per_s"] > 0


def test_crop_render_rates_cover_each_setting_and_refuse_unknown_ones(tmp_path):
    from tests.photo_data import write_source

    crops = load_tool("bench_crops")
    write_source(tmp_path / "site", {"train": 2, "val": 1}, size=256)
    rates = crops.rates("site", str(tmp_path), 20, 32, ["recipe", "robust", "simclr"])
    assert list(rates) == ["recipe", "robust", "simclr"] and all(r > 0 for r in rates.values())
    with pytest.raises(ValueError, match="unknown"):
        crops.rates("site", str(tmp_path), 20, 32, ["sharpen"])
    # "robust" is the shipped add-on's options, read from the file (noise and saturation included)
    assert crops.SETTINGS["robust"]["noise"] == 6.0 and crops.SETTINGS["robust"]["saturation"] == 0.3
    bad = tmp_path / "addon.cfg"
    bad.write_text("# comment\n--gamma=0.2\n--epochs=48\n")
    with pytest.raises(ValueError, match="--epochs is not a crop option"):
        crops.addon_options(str(bad))
    ms = crops.noise_draw_ms(32, 3)
    assert set(ms) == {"rng.normal", "gaussian_noise"} and all(v > 0 for v in ms.values())
