"""Explanation maps of a trained model drawn over its chips: a query against gallery chips, or saved ranked lists.

  python tools/explain.py --config_file configs/demo/transoss.yml --weights logs/demo/model_final.pth \
      --query q_RGB.tif --gallery a_SAR.tif b_SAR.tif --out pair.png [--map pair] [KEY VALUE ...]
  python tools/explain.py --config_file configs/demo/transoss.yml --weights logs/demo/model_final.pth \
      --from-features logs/demo/test/model_final/features_O2S.npz --queries 4 --topk 5 --out grid.png
--from-features ranks as tools/ranked_list.py does (the saved features, the chips found by name under
DATASETS.ROOT_DIR) and still needs the model for the maps: give the weights the features were computed with.
Maps: pair (Grad-CAM of each pair's similarity), rollout, attention (last block); see docs/explain.md.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from configs import load_config, parse_args  # noqa: E402
from datasets import build_dataset  # noqa: E402
from datasets.records import DatasetError, parse_hoss_name  # noqa: E402
from model import build_model  # noqa: E402
from model.attention_maps import HEAD_FUSIONS  # noqa: E402
from model.weights import load_weights  # noqa: E402
from processor.evaluator import load_saved_ranking  # noqa: E402
from processor.explainer import FEATURES, MAP_KINDS, Explainer, explain_ranked_lists  # noqa: E402
from tools.extract_features import split_images_and_overrides  # noqa: E402
from utils.cli import describe, run_cli  # noqa: E402
from utils.device import resolve_device  # noqa: E402
from utils.errors import ShipReIDError  # noqa: E402
from utils.explain_plot import draw_cells  # noqa: E402
from utils.ranked_list import distance_labels  # noqa: E402

# Distances (squared, of unit features: 0..4) that differ more than this between the saved features and the model.
DISTANCE_GAP = 1e-3


def pid_from_name(path: str):
    """The identity in a HOSS chip name, None for any other name."""
    try:
        return parse_hoss_name(path).pid
    except DatasetError:
        return None


def explain_pairs(explainer: Explainer, query: str, gallery: list[str], out: str) -> str:
    q = explainer.load(query, pid=pid_from_name(query))
    gs = [explainer.load(path, pid=pid_from_name(path)) for path in gallery]
    maps = explainer.explain_row(q, gs)
    return draw_cells([explainer.row_cells(q, gs, maps, distance_labels(maps.distances))], out)


def explain_saved(explainer: Explainer, cfg, path: str, num_rows: int, top_k: int, out: str) -> str:
    try:
        protocol, dist = load_saved_ranking(cfg, path, build_dataset(cfg))
    except ShipReIDError as err:
        raise ShipReIDError(f"--from-features {err}") from None
    written, gap = explain_ranked_lists(explainer, protocol.query, protocol.gallery, dist, out, num_rows, top_k)
    if gap > DISTANCE_GAP:
        print(f"warning: the model's distances differ from the saved ranking's by up to {gap:.3g}: the maps explain "
              "--weights, the ranking comes from the features (expected with TEST.AQE, TEST.RE_RANKING, "
              "TEST.FLIP_FEATS or TEST.FUSION; otherwise check that --weights computed them)", file=sys.stderr)
    return written


def main(argv=None) -> str:
    parser = argparse.ArgumentParser(description=describe(__doc__))
    parser.add_argument("--config_file", required=True)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--out", required=True, help="output .png")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--query", help="query chip (..._RGB.tif / ..._SAR.tif)")
    source.add_argument("--from-features", dest="from_features", help="features_<protocol>.npz written by test.py")
    parser.add_argument("--gallery", nargs="+", default=[], help="gallery chips to explain the query against")
    parser.add_argument("--queries", type=int, default=4, help="--from-features: the first N queries")
    parser.add_argument("--topk", type=int, default=5, help="--from-features: the top K results of each")
    parser.add_argument("--map", default="pair", choices=MAP_KINDS)
    parser.add_argument("--feature", default="test", choices=FEATURES,
                        help="SDF-Net: the shared or the specific feature instead of the test feature")
    parser.add_argument("--head_fusion", default="mean", choices=HEAD_FUSIONS)
    parser.add_argument("--discard_ratio", type=float, default=0.0, help="rollout: share of lowest attention dropped")
    parser.add_argument("--device", default=None, help="default: the config's MODEL.DEVICE")
    parser.add_argument("opts", nargs="*", default=[], metavar="KEY VALUE", help="config overrides")
    args = parse_args(parser, argv)
    overrides = list(args.opts)
    if args.query is not None:
        if not args.gallery:
            raise ShipReIDError("--query needs --gallery: the chips to explain it against")
        gallery, extra = split_images_and_overrides(args.gallery)  # KEY VALUE pairs typed after the gallery chips
        overrides += extra
    elif args.gallery:
        raise ShipReIDError("--gallery goes with --query; --from-features takes the gallery from the saved ranking")
    if args.queries < 1 or args.topk < 1:
        raise ShipReIDError(f"--queries and --topk must be at least 1, got {args.queries} and {args.topk}")
    cfg = load_config(args.config_file, overrides)
    device = resolve_device(args.device or cfg.MODEL.DEVICE)
    model = build_model(cfg).to(device).eval()
    load_weights(model, args.weights, mode="full", strict=cfg.MODEL.STRICT_LOAD, file_grid=cfg.MODEL.WEIGHTS_GRID)
    explainer = Explainer(model, cfg, device, args.map, args.feature, args.head_fusion, args.discard_ratio)
    if args.query is not None:
        path = explain_pairs(explainer, args.query, gallery, args.out)
    else:
        path = explain_saved(explainer, cfg, args.from_features, args.queries, args.topk, args.out)
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    run_cli(main)
