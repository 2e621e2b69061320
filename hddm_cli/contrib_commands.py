"""The contributor's commands: fetch a published run's clustering, assign your images, prepare them
with the run's settings, train (`hddmp expert train`), validate and submit (docs/contributing-an-expert.md)."""
from __future__ import annotations

import argparse
import os


def _storage_options(pairs: list[str] | None) -> dict:
    """--storage-option key=value (repeatable) -> fsspec storage_options; values parsed as JSON when they parse."""
    import json

    out: dict = {}
    for pair in pairs or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--storage-option must be key=value, got {pair!r}")
        try:
            out[key] = json.loads(value)
        except ValueError:
            out[key] = value
    if "endpoint_url" in out:  # s3fs takes the endpoint inside client_kwargs
        out.setdefault("client_kwargs", {})["endpoint_url"] = out.pop("endpoint_url")
    return out


def _add_storage(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--storage-option", action="append", metavar="KEY=VALUE",
                        help="fsspec option for the run's store, repeatable (e.g. key=..., secret=..., "
                             "endpoint_url=...); credentials may also come from the environment (AWS_ACCESS_KEY_ID, "
                             "AWS_SECRET_ACCESS_KEY, AWS_ENDPOINT_URL)")


def _fetch(args) -> int:
    from hddm_core.contrib import RunLayout, fetch_clustering

    layout = RunLayout(embed=args.embed_prefix, cluster=args.cluster_prefix, prepare=args.prepare_prefix,
                       experts=args.experts_prefix)
    card = fetch_clustering(args.run, args.out, layout=layout, storage_options=_storage_options(args.storage_option))
    lat, text = card["latent"], card["text"]
    print(f"fetched clustering {card['clustering_version']} from {card['run']}")
    print(f"  clusters: {card['n_clusters']} (levels {card['level_sizes']}, sizes in the run {card['cluster_sizes']})")
    print(f"  embedder: {card['embedder'].get('model')} ({card['embedding_dim']}-d)")
    print(f"  latents: {lat['space']} {lat['latent_shape']} scale {lat['scale']} at {lat['resolution']} px")
    print(f"  text: {text['encoder']} width {text['width']}, max_length {text['max_length']}")
    print(f"  experts land under: {card['run']}/{card['layout']['experts']}/<name>")
    print(f"wrote {os.path.join(args.out, 'clustering.json')} and centroids.safetensors")
    return 0


def _assign(args) -> int:
    from hddm_core.contrib import assign_contribution

    given = [(k, v) for k, v in (("images", args.images), ("shard", args.shard), ("download", args.download)) if v]
    if len(given) != 1:
        raise ValueError("give exactly one of --images FOLDER, --shard TAR or --download URL "
                         f"(got {len(given) or 'none'})")
    summary = assign_contribution(args.clustering, dict(given), args.work, device=args.device,
                                  embedder_path=args.embedder_path, batch_size=args.batch_size, force=args.force)
    print(f"assigned {summary['n_samples']} images to the run's clusters ({summary['clustering_version']})")
    for c, n in enumerate(summary["sizes"]):
        print(f"  cluster {c}: {n} image{'s' if n != 1 else ''}" + ("   <- most of yours" if c == summary["largest"] else ""))
    print(f"picture: {summary['picture']}")
    print(f"next: hddmp contrib prepare --work {args.work}")
    return 0


def _prepare(args) -> int:
    from hddm_core.contrib import prepare_contribution

    out = prepare_contribution(args.work, device=args.device, vae_path=args.vae_path,
                               text_encoder_path=args.text_encoder_path, batch_size=args.batch_size, force=args.force)
    print(f"prepared training inputs: {out['prepare']}")
    print(f"  per cluster: {out['clusters']}")
    print(f"next: hddmp expert train --artifact-root {args.work} --objective ddpm-eps|flow-matching "
          f"(trains for cluster {out['largest']}, where most of your images are; --cluster-id to choose)")
    return 0


def _resolve(args) -> tuple[str, str | None]:
    """(expert location, clustering folder) from PATH / --work / --clustering."""
    from hddm_core.contrib import trained_expert

    path, clustering = args.path, args.clustering
    if args.work:
        recorded, recorded_clustering = trained_expert(args.work)
        path = path or recorded
        clustering = clustering or recorded_clustering
    if not path:
        raise ValueError("give the expert folder (PATH) or --work DIR of a contribution with a trained expert")
    return path, clustering


def validate_command(args) -> int:
    """`hddmp expert validate`: the pipeline's checks (+ compatibility with a fetched run)."""
    from hddm_core.contrib import check_contribution, refusal_message

    from .output import print_checks

    path, clustering = _resolve(args)
    checks, _ = check_contribution(path, clustering, cluster_id=args.cluster_id)
    print(path + ("" if clustering else "  (no --clustering: compatibility with a run not checked)"))
    ok = print_checks(checks)
    if not ok:
        print(refusal_message(checks).replace("refused: ", "first problem: ", 1))
    return 0 if ok else 1


def submit_command(args) -> int:
    """`hddmp expert submit`: checks, store under the run's experts prefix, announce the landing."""
    from hddm_core.contrib import read_card, submit_expert

    from .events import announce_landing

    path, clustering = _resolve(args)
    if not clustering:
        raise ValueError("submission needs --clustering DIR (from `hddmp contrib fetch`) or --work DIR")
    card = read_card(clustering)
    result = submit_expert(path, clustering, name=args.name, cluster_id=args.cluster_id, run_url=args.run,
                           storage_options=_storage_options(args.storage_option))
    print(f"submitted {result['objective']} expert for cluster {result['cluster_id']} -> {result['uri']}")
    for line in result["checks"]:
        print(f"  {line}")
    if args.no_event:
        print("no event sent (--no-event)")
    else:
        print(announce_landing(result, run_url=args.run or card["run"], experts_prefix=card["layout"]["experts"]))
    return 0


def add_expert_path_args(parser: argparse.ArgumentParser, *, submit: bool) -> None:
    parser.add_argument("path", nargs="?", help="expert folder or URL (expert.json + weights-*.safetensors)")
    parser.add_argument("--work", help="a contribution work folder: use the expert `hddmp expert train` recorded there")
    parser.add_argument("--clustering", help="folder written by `hddmp contrib fetch`: also check compatibility "
                                             "with that run" + (" (required)" if submit else ""))
    parser.add_argument("--cluster-id", type=int, help="the cluster you trained for (must equal the manifest's)")
    if submit:
        parser.add_argument("--name", required=True,
                            help="name under the run's experts prefix (letters, digits, '.', '_', '-')")
        parser.add_argument("--run", help="run root URL to write to [default: the run the clustering came from]")
        parser.add_argument("--no-event", action="store_true", help="store only; do not emit hddm.expert.landed")
        _add_storage(parser)


def add_contrib_parser(sub) -> None:
    contrib = sub.add_parser("contrib", help="the contributor's path: fetch a run's clustering, assign and prepare "
                                             "your images, then `expert train/validate/submit`",
                             description="Train an expert for a published run on your own machine. Guide: "
                                         "docs/contributing-an-expert.md")
    csub = contrib.add_subparsers(dest="contrib_command", required=True, metavar="{fetch,assign,prepare,submit}")

    fetch = csub.add_parser("fetch", help="copy a published run's clustering (centroids of every level, embedder, "
                                          "preprocessing, latent/text settings, clustering version)")
    fetch.add_argument("--run", required=True, help="the run's artifact root (local folder or s3://bucket/prefix)")
    fetch.add_argument("--out", required=True, help="local folder for clustering.json + centroids.safetensors")
    fetch.add_argument("--cluster-prefix", default="cluster", help="the run's cluster stage prefix [default: %(default)s]")
    fetch.add_argument("--embed-prefix", default="embed", help="the run's embed stage prefix [default: %(default)s]")
    fetch.add_argument("--prepare-prefix", default="prepare", help="the run's prepare stage prefix [default: %(default)s]")
    fetch.add_argument("--experts-prefix", default="experts/registry",
                       help="where the run's experts land [default: %(default)s]")
    _add_storage(fetch)
    fetch.set_defaults(func=_fetch)

    assign = csub.add_parser("assign", help="embed your images with the run's embedder and assign them to its clusters")
    assign.add_argument("--clustering", required=True, help="folder written by `hddmp contrib fetch`")
    assign.add_argument("--work", required=True, help="your work folder (or URL) for embeddings, assignments, inputs")
    src = assign.add_argument_group("your images (exactly one)")
    src.add_argument("--images", help="a folder of .png/.jpg/.jpeg/.webp; a caption per image from NAME.txt beside it, "
                                      "else from the file name")
    src.add_argument("--shard", help="a LAION-style webdataset .tar shard (img2dataset output: KEY.jpg + KEY.txt)")
    src.add_argument("--download", help="a finished `hddmp data download` stage (its prefix URL)")
    assign.add_argument("--device", default=None, help="cpu | cuda [default: cuda when available]")
    assign.add_argument("--embedder-path", help="local copy of the run's embedder weights (same model)")
    assign.add_argument("--batch-size", type=int, default=32, help="[default: %(default)s]")
    assign.add_argument("--force", action="store_true", help="recompute even if finished")
    assign.set_defaults(func=_assign)

    prepare = csub.add_parser("prepare", help="encode your assigned images with the run's latent space and text encoder")
    prepare.add_argument("--work", required=True, help="the work folder given to `contrib assign`")
    prepare.add_argument("--device", default=None, help="cpu | cuda [default: cuda when available]")
    prepare.add_argument("--vae-path", help="local copy of the run's VAE (latent space sd-vae)")
    prepare.add_argument("--text-encoder-path", help="local copy of the run's text encoder")
    prepare.add_argument("--batch-size", type=int, default=32, help="[default: %(default)s]")
    prepare.add_argument("--force", action="store_true", help="recompute even if finished")
    prepare.set_defaults(func=_prepare)

    submit = csub.add_parser("submit", help="same as `hddmp expert submit`")
    add_expert_path_args(submit, submit=True)
    submit.set_defaults(func=submit_command)
