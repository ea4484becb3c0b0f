"""A self-contained HTML report of an experiment, for a clinician-researcher.

Figures are PNGs written to `<out>/figures/` and embedded (base64) in
`<out>/report.html`, so the one file can be mailed or archived.
"""

from __future__ import annotations

import base64
import html
import io
import json

import numpy as np
import pandas as pd

from thyro.config import Config, config_to_yaml
from thyro.data import storage
from thyro.explain import shape
from thyro.model import checkpoint
from thyro.model.modelcard import INTENDED_USE, package_versions
from thyro.stats.metrics import METRIC_NAMES as SHOWN

# The study's published means over 10 splits (ResNet18); baselines were not
# reported numerically in the summary thyro was built from.
PUBLISHED = {"resnet18": {"auc": 0.997, "accuracy": 0.984, "recall": 0.978, "precision": 0.939, "f1": 0.957}}


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, out: str, name: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    _plt().close(fig)
    data = buf.getvalue()
    storage.write_bytes(storage.join(out, "figures", name), data)
    return base64.b64encode(data).decode()


def roc_figure(trials: pd.DataFrame, out: str) -> str:
    from sklearn.metrics import roc_curve

    plt = _plt()
    models = list(trials["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False)
    grid = np.linspace(0, 1, 101)
    for ax, model in zip(axes[0], models):
        tprs = []
        for run in trials.loc[trials["model"] == model, "run"]:
            p = checkpoint.load_predictions(run)
            fpr, tpr, _ = roc_curve(p["label"], p["prob_malignant"])
            ax.plot(fpr, tpr, color="0.7", lw=0.7)
            tprs.append(np.interp(grid, fpr, tpr))
        mean, sd = np.mean(tprs, 0), np.std(tprs, 0)
        ax.fill_between(grid, np.clip(mean - sd, 0, 1), np.clip(mean + sd, 0, 1), alpha=0.25, color="C0")
        ax.plot(grid, mean, color="C0", lw=2, label="mean over splits (band: ±1 sd)")
        ax.plot([0, 1], [0, 1], ls=":", color="k", lw=0.8)
        auc = trials.loc[trials["model"] == model, "auc"]
        ax.set_title(f"{model}: AUC {auc.mean():.3f} ± {auc.std(ddof=1) if len(auc) > 1 else 0:.3f}")
        ax.set_xlabel("1 - specificity")
        ax.set_ylabel("sensitivity")
    axes[0][0].legend(loc="lower right", fontsize=7)
    return _save(fig, out, "roc.png")


def calibration_figure(trials: pd.DataFrame, out: str) -> str:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    bins = np.linspace(0, 1, 11)
    for i, model in enumerate(trials["model"].unique()):
        p = pd.concat([checkpoint.load_predictions(r) for r in trials.loc[trials["model"] == model, "run"]])
        idx = np.minimum(np.digitize(p["prob_malignant"], bins) - 1, 9)
        g = p.groupby(idx)
        ax.plot(g["prob_malignant"].mean(), g["label"].mean(), marker="o", color=f"C{i}", label=model)
    ax.plot([0, 1], [0, 1], ls=":", color="k")
    ax.set_xlabel("predicted probability of malignancy")
    ax.set_ylabel("observed fraction malignant")
    ax.set_title("Calibration (test predictions, all splits)")
    ax.legend(fontsize=7)
    return _save(fig, out, "calibration.png")


def cam_grid_figure(run: str, manifest: pd.DataFrame, per_class: int, out: str, frame: str = "middle") -> str | None:
    """Test images with their maps put back over the original screen (white: true nodule outline,
    cyan: the crop the model saw)."""
    from thyro.data.decode import read_image
    from thyro.explain.cam_analysis import load_cams
    from thyro.image.geometry import Geometry, crop_map_to_original, model_map_to_crop

    if not storage.exists(storage.join(run, "cams.npz")):
        return None
    plt = _plt()
    ids, cams, geoms = load_cams(run)
    m = manifest.set_index("image_id")
    preds = checkpoint.load_predictions(run).set_index("image_id")
    fig, axes = plt.subplots(2, per_class, figsize=(2.4 * per_class, 4.8), squeeze=False)
    for row, label in enumerate((0, 1)):
        chosen = [k for k, i in enumerate(ids) if m.loc[i, "label"] == label][:per_class]
        for col in range(per_class):
            ax = axes[row][col]
            ax.axis("off")
            if col >= len(chosen):
                continue
            k = chosen[col]
            img = read_image(m.loc[ids[k], "path"], frame=frame)[:, :, 0]
            ax.imshow(img, cmap="gray")
            if geoms:
                g = Geometry.from_dict(geoms[k])
                full = crop_map_to_original(model_map_to_crop(cams[k].astype(np.float32), g), g)
                y0, x0, y1, x1 = g.box
                ax.plot([x0, x1, x1, x0, x0], [y0, y0, y1, y1, y0], color="c", lw=0.6)
            else:
                full = cams[k].astype(np.float32)
            h, w = img.shape
            ax.imshow(np.ma.masked_less_equal(full, 0.02), cmap="jet", alpha=0.4, extent=(0, w, h, 0), vmin=0, vmax=1)
            if isinstance(m.loc[ids[k]].get("mask_path"), str):
                from PIL import Image
                mask = np.asarray(Image.open(io.BytesIO(storage.read_bytes(m.loc[ids[k], "mask_path"]))))
                ax.contour(mask > 127, levels=[0.5], colors="w", linewidths=0.6)
            ax.set_title(f"{'malignant' if label else 'benign'}  p={preds.loc[ids[k], 'prob_malignant']:.2f}",
                         fontsize=7)
    fig.suptitle("Grad-CAM (malignant log-odds) on test images, over the original screen "
                 "(white: true nodule outline, where known; cyan: the crop the model saw)", fontsize=8)
    return _save(fig, out, "cam_grid.png")


def _cam_features(trials: pd.DataFrame, model: str) -> pd.DataFrame:
    runs = trials.loc[trials["model"] == model, ["run", "split"]]
    frames = [pd.read_csv(io.BytesIO(storage.read_bytes(storage.join(r, "cam_features.csv")))).assign(split=s)
              for r, s in runs.itertuples(index=False) if storage.exists(storage.join(r, "cam_features.csv"))]
    feats = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    if "pointing_hit" in feats:  # True / False / empty (no region) -> 1 / 0 / NaN, so it averages
        feats["pointing_hit"] = feats["pointing_hit"].astype(float)
    return feats


def shape_analysis(trials: pd.DataFrame, reference: str) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame] | None:
    """Per-image CAM features averaged over the splits in which the image was a test image
    (one observation per image, so overlapping splits do not inflate n), the tests, and how
    many all-zero maps (NaN features) were left out, per class."""
    feats = _cam_features(trials, reference)
    if feats.empty:
        return None
    zero = feats.get("cam_zero", pd.Series(False, index=feats.index)).astype(bool)
    dropped = pd.DataFrame({"class": ["benign", "malignant"],
                            "maps": [int((feats["label"] == c).sum()) for c in (0, 1)],
                            "all_zero_maps_left_out": [int((zero & (feats["label"] == c)).sum()) for c in (0, 1)]})
    per_image = feats[~zero].groupby("image_id").mean(numeric_only=True).reset_index()
    per_image["label"] = per_image["label"].round().astype(int)
    return per_image, shape.compare_groups(per_image), dropped


def faithfulness_table(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model, g in trials.groupby("model", sort=False):
        fs = [json.loads(storage.read_bytes(storage.join(r, "faithfulness.json"))) for r in g["run"]
              if storage.exists(storage.join(r, "faithfulness.json"))]
        fs = [f for f in fs if f.get("n_images")]
        if fs:
            rows.append({"model": model, "splits": len(fs), "images": int(sum(f["n_images"] for f in fs)),
                         **{k: float(np.mean([f[k] for f in fs])) for k in
                            ("auc_deletion", "auc_deletion_random", "deletion_ratio", "auc_insertion",
                             "auc_insertion_random", "insertion_ratio")}})
    return pd.DataFrame(rows)


def cam_in_field_table(trials: pd.DataFrame) -> pd.DataFrame:
    rows = []
    for model in trials["model"].unique():
        f = _cam_features(trials, model)
        if f.empty or "cam_in_field" not in f:
            continue
        v = f["cam_in_field"].dropna()
        rows.append({"model": model, "maps": len(v), "median": v.median(), "p10": v.quantile(0.1),
                     "p90": v.quantile(0.9), "share >= 0.95": float((v >= 0.95).mean())})
    return pd.DataFrame(rows)


def shape_figure(per_image: pd.DataFrame, tests: pd.DataFrame, out: str) -> str:
    plt = _plt()
    feats = [f for f in shape.FEATURES if f in per_image]
    fig, axes = plt.subplots(1, len(feats), figsize=(2.2 * len(feats), 3.0), squeeze=False)
    t = tests.set_index("feature")
    for ax, f in zip(axes[0], feats):
        data = [per_image.loc[per_image["label"] == c, f].dropna() for c in (0, 1)]
        ax.boxplot(data, tick_labels=["benign", "malignant"], widths=0.6)
        ax.set_title(f"{f}\nHolm p={t.loc[f, 'p_holm']:.3g}", fontsize=8)
        ax.tick_params(labelsize=7)
    fig.suptitle("Shape of the Grad-CAM highlighted region (reference model)", fontsize=9, y=1.08)
    return _save(fig, out, "cam_shape.png")


def _table(df: pd.DataFrame, floatfmt: str = "{:.3f}") -> str:
    return df.to_html(index=False, border=0, classes="t", float_format=lambda x: floatfmt.format(x), na_rep="—")


def failed_trials_section(failed: pd.DataFrame | None, max_failures: int) -> list[str]:
    """The trials that did not finish, with their errors: left out of every statistic above."""
    if failed is None or not len(failed):
        return []
    return ["<h2>Failed trials</h2>",
            f"<p class=warn>{len(failed)} trial(s) failed after {max_failures} retries and are left out of every "
            "statistic in this report: the figures and intervals above use the splits that finished. Running the "
            "same command again retries them.</p>", _table(failed[["model", "split", "error"]])]


def write_report(cfg: Config, out: str, trials: pd.DataFrame, summary: pd.DataFrame,
                 manifest: pd.DataFrame, failed: pd.DataFrame | None = None) -> str:
    ref = cfg.experiment.reference_model
    rows = []
    for _, s in summary.iterrows():
        r = {"model": s["model"], "splits": int(s["n_splits"])}
        if not s["n_splits"]:  # every trial of this model failed: see "Failed trials"
            rows.append(r)
            continue
        for k in SHOWN:
            r[k] = f"{s[f'{k}_mean']:.3f} ± {s[f'{k}_sd']:.3f} [{s[f'{k}_ci_low']:.3f}, {s[f'{k}_ci_high']:.3f}]"
        pub = PUBLISHED.get(s["model"], {})
        r["study (published)"] = ", ".join(f"{k} {v:.3f}" for k, v in pub.items()) or "—"
        if s["model"] != ref and "p_vs_reference_corrected_t" in s:
            r[f"vs {ref}"] = (f"ΔAUC {s['auc_diff_vs_reference_mean']:+.3f}, corrected t p={s['p_vs_reference_corrected_t']:.3g}; "
                              f"DeLong median p={s['delong_p_median']:.3g} ({int(s['delong_splits_p_lt_0.05'])}/"
                              f"{int(s['n_splits'])} splits p<0.05)")
        else:
            r[f"vs {ref}"] = "reference"
        r["ECE raw → temperature-scaled"] = f"{s['ece_mean']:.3f} → {s.get('ece_calibrated_mean', float('nan')):.3f}"
        r[f"test sens / spec at the threshold chosen for sens ≥ {cfg.eval.target_sensitivity:.2f}"] = (
            f"{s.get('sensitivity_at_target_sensitivity_mean', float('nan')):.3f} / "
            f"{s['specificity_at_target_sensitivity_mean']:.3f} (chosen on: {s.get('threshold_chosen_on', 'test')})")
        rows.append(r)
    chosen = str(summary.get("threshold_chosen_on", pd.Series(["test"])).iloc[0])
    op_text = ("The operating threshold and the temperature were fitted on patients held back from each split's "
               f"training part ({cfg.eval.calibration_fraction:.0%} of them), never on its test set; the table shows "
               "the sensitivity and specificity they reach on the test set." if chosen == "calibration" else
               "No calibration slice was held back (eval.calibration_fraction = 0): the operating point is the "
               f"fixed threshold {cfg.eval.threshold} and no temperature was fitted.")
    parts = [f"<h1>thyro experiment: {html.escape(cfg.name)}</h1>",
             f"<p class=warn><b>{html.escape(INTENDED_USE)}</b></p>",
             *failed_trials_section(failed, cfg.ray.max_failures),
             "<h2>Performance over splits</h2>",
             "<p>mean ± sd [95% interval] over the train/test splits; each split is a "
             f"stratified {1 - cfg.split.test_size:.0%}/{cfg.split.test_size:.0%} partition grouped by patient. "
             "Splits share patients, so their results are correlated: the interval is the Nadeau &amp; Bengio "
             "corrected t interval, mean ± t(J-1)·sqrt((1/J + n_test/n_train)·s²), wider than a naive bootstrap "
             "of the split means; models are compared with DeLong's test per split and the corrected resampled "
             "t-test across splits. Accuracy, recall, precision, F1 and specificity are at the study's threshold "
             f"{cfg.eval.threshold} on the uncalibrated probability. {html.escape(op_text)}</p>",
             pd.DataFrame(rows).to_html(index=False, border=0, classes="t", escape=True),
             f'<img src="data:image/png;base64,{roc_figure(trials, out)}">',
             f'<img src="data:image/png;base64,{calibration_figure(trials, out)}">']
    first = trials.loc[trials["model"] == ref].sort_values("split")
    if len(first):
        grid = cam_grid_figure(first["run"].iloc[0], manifest, cfg.experiment.cam_grid_per_class, out,
                               frame=cfg.preprocess.frame or "middle")
        if grid:
            parts += ["<h2>Grad-CAM examples</h2>", f'<img src="data:image/png;base64,{grid}">']
        layer = checkpoint.load_card(first["run"].iloc[0])["model"].get("cam_layer")
        target = {"malignant": "the malignant log-odds (z1 − z0) for every image",
                  "benign": "the benign log-odds (z0 − z1) for every image",
                  "predicted": "the predicted class's log-odds"}[cfg.cam.target]
        parts += [f"<p>Maps explain {target} at layer <code>{html.escape(str(layer))}</code>, whose grid at "
                  f"{cfg.preprocess.image_size or 'the native'} px input is coarse (ResNet18's last block: 1/32 of "
                  "the input side); they are upsampled bilinearly and put back over the original screen, so region "
                  "shapes measured on them mostly reflect that interpolation. <code>cam.layer: layer3</code> "
                  "gives maps twice as fine.</p>"]
    cif = cam_in_field_table(trials)
    if len(cif):
        storage.write_bytes(storage.join(out, "cam_in_field.csv"), cif.to_csv(index=False).encode())
        parts += ["<h2>Does the map look at the anatomy? cam_in_field</h2>",
                  "<p>Share of each map's mass inside the scan field (the phantom's true field where known, "
                  "else the detected one); mass on borders, text, scales or letterbox padding counts as outside.</p>",
                  _table(cif)]
    ft = faithfulness_table(trials)
    if len(ft):
        storage.write_bytes(storage.join(out, "cam_faithfulness.csv"), ft.to_csv(index=False).encode())
        parts += ["<h2>Is the map faithful? Deletion and insertion (RISE)</h2>",
                  "<p>Pixels replaced by the image's mean grey in the map's order (deletion: area under the "
                  "explained class's probability, lower is better) or put back in that order (insertion: higher "
                  "is better), against a random order. deletion_ratio &lt; 1 and insertion_ratio &gt; 1 mean the "
                  f"map ranks pixels by what the model uses. Up to {cfg.cam.faithfulness_images} test images per "
                  "split; all-zero maps left out.</p>", _table(ft)]
    sa = shape_analysis(trials, ref)
    if sa is not None:
        per_image, tests, dropped = sa
        storage.write_bytes(storage.join(out, "cam_shape_tests.csv"), tests.to_csv(index=False).encode())
        storage.write_bytes(storage.join(out, "cam_zero_maps.csv"), dropped.to_csv(index=False).encode())
        parts += ["<h2>Does the highlighted region's shape differ between benign and malignant?</h2>",
                  f"<p>{len(per_image)} test images (features averaged over the splits where each was a test image); "
                  "two-sided Mann-Whitney U per feature, rank-biserial effect size (positive: larger in malignant), "
                  "Holm-corrected across features. Shapes are measured in the original image's geometry: "
                  "height_width &gt; 1 is taller-than-wide; orientation_axial is cos 2θ of the major axis (+1 "
                  "vertical, −1 horizontal). An all-zero map (nothing raises the malignant log-odds) has no region; "
                  "those maps are left out, per class:</p>", _table(dropped),
                  _table(tests.drop(columns=["U"], errors="ignore"), "{:.3g}"),
                  f'<img src="data:image/png;base64,{shape_figure(per_image, tests, out)}">']
        if "energy_inside" in per_image:
            loc = per_image.groupby("label")[["energy_inside", "pointing_hit"]].mean()
            loc.index = ["benign" if i == 0 else "malignant" for i in loc.index]
            parts += ["<h2>Localisation against the true nodule mask (phantom)</h2>",
                      "<p>energy_inside: share of the map's energy inside the nodule; pointing_hit: share of maps "
                      "whose maximum lies inside it.</p>", _table(loc.reset_index(names="class"))]
    n_mal = int(manifest["label"].sum())
    parts += ["<h2>Data</h2>",
              f"<p>{len(manifest)} images ({len(manifest) - n_mal} benign, {n_mal} malignant) from "
              f"{manifest['patient_id'].nunique()} patients.</p>",
              "<h2>Per-trial results</h2>",
              _table(trials[["model", "split", *SHOWN, "ece", *[c for c in ("ece_calibrated",
                     "sensitivity_at_target_sensitivity", "specificity_at_target_sensitivity") if c in trials],
                     "n_train", "n_test"]]),
              "<h2>Configuration</h2>", f"<pre>{html.escape(config_to_yaml(cfg))}</pre>",
              "<h2>Software</h2>", f"<pre>{html.escape(str(package_versions()))}</pre>"]
    style = ("<style>body{font-family:sans-serif;max-width:1200px;margin:auto}"
             "table.t{border-collapse:collapse;font-size:12px}table.t td,table.t th{padding:3px 8px;"
             "border-bottom:1px solid #ddd;text-align:left}.warn{background:#fff3cd;padding:8px}"
             "img{max-width:100%}</style>")
    doc = f"<!doctype html><html><head><meta charset=utf-8><title>thyro report</title>{style}</head><body>{''.join(parts)}</body></html>"
    uri = storage.join(out, "report.html")
    storage.write_bytes(uri, doc.encode())
    return uri
