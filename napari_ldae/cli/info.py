"""info: a bundle's facts."""

from __future__ import annotations

import argparse

from napari_ldae._resources import display_path
from napari_ldae.cli._common import bundle_option, command, session
from napari_ldae.operations import number


def add_info(sub: argparse._SubParsersAction) -> None:
    p = command(
        sub, "info", run_info,
        help="print a model bundle's facts (architecture, preprocessing, directions)",
        description="Print a bundle's facts: architecture sizes, preprocessing contract, "
        "default steps, directions and their meanings, metrics, provenance and content hash.",
    )
    bundle_option(p)
    p.add_argument("--device", metavar="D", help="device to load it on (default: the first "
                   "available)")
    p.add_argument("--json", action="store_true", help="print one JSON object instead")


def run_info(a: argparse.Namespace) -> None:
    import json

    s = session(a)
    info, config = s.info(), s.bundle.config
    ae, unet, enc = config["autoencoder"], config["unet"], config["encoder"]
    info["architecture"] = {
        "autoencoder": {"channels": ae["channels"],
                        "latent_channels": ae["latent_channels"],
                        "latent_shape": list(s.model.latent_shape),
                        "scale_factor": config["scale_factor"]},
        "unet": {k: unet[k] for k in ("base_channels", "channel_mult", "num_res_blocks",
                                      "attention_resolutions") if k in unet},
        "encoder": {k: enc[k] for k in ("backbone", "emb_dim", "num_slices") if k in enc},
    }
    info["preprocessing"] = s.contract.to_dict()
    info["provenance"] = config.get("provenance", {})
    if a.json:
        print(json.dumps(info, indent=2, default=str))
        return
    arch = info["architecture"]
    lines = [
        f"bundle       {info['name']}  ({display_path(info['path'])})",
        f"sha256       {info['bundle_sha256']}",
        f"trained      {'yes' if info['trained'] else 'NO (random weights)'}",
        f"parameters   {info['parameters'] or 0:,}",
        f"autoencoder  channels {arch['autoencoder']['channels']}, latent "
        f"{'×'.join(map(str, arch['autoencoder']['latent_shape']))}, scale factor "
        f"{arch['autoencoder']['scale_factor']}",
        "unet         " + ", ".join(f"{k} {v}" for k, v in arch["unet"].items()),
        "encoder      " + ", ".join(f"{k} {v}" for k, v in arch["encoder"].items()),
        f"input        {'×'.join(map(str, info['input_shape']))} voxels at "
        f"{'×'.join(number(v) for v in info['spacing'])} mm, {info['orientation']}, "
        f"intensity {info['preprocessing']['intensity']}",
        "steps        " + ", ".join(f"{k} {v}" for k, v in info["steps"].items()),
        "directions",
    ]
    for name, d in info["directions"].items() or [("(none)", {})]:
        extra = "; ".join(str(x) for x in (d.get("source"), d.get("metrics")) if x)
        lines.append(f"  {name:<10} {d.get('meaning', '')}" + (f"  [{extra}]" if extra
                                                                 else ""))
    lines.append("metrics" + ("" if info["metrics"] else "      none recorded"))
    lines += [f"  {k:<10} {v}" for k, v in info["metrics"].items()]
    print("\n".join(lines))
