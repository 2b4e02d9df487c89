"""Run by tests/test_hf_reference.py in a subprocess (another transformers on PYTHONPATH):

    python tests/hf_reference_run.py MODE CASES.pt OUT.pt

builds transformers' DinatBackbone / DinatModel from the configs and state dicts in CASES.pt and
saves their outputs (feature maps, last hidden state, attentions) to OUT.pt. MODE:

``natten-mps``
    transformers' own forward on natten-mps's ``natten2dqkrpb`` / ``natten2dav`` (the old NATTEN
    ops in pure PyTorch): what transformers computed on NATTEN <= 0.17.4.
``bridge``, ``bridge-replace``
    after ``dinat_backbone.hf.enable()`` (``replace=True``); the status goes into OUT.pt.
"""
import sys

import torch


def main(mode, cases_path, out_path):
    import transformers

    status = None
    if mode == "natten-mps":
        import natten_mps.compat.v014 as v014
        import transformers.models.dinat.modeling_dinat as md

        md.natten2dqkrpb, md.natten2dav = v014.natten2dqkrpb, v014.natten2dav
        md.requires_backends = lambda *args, **kwargs: None  # it insists on the natten package
    else:
        import dinat_backbone.hf as hf

        # before modeling_dinat is imported: with a natten >= 0.17.5 installed, transformers' own import of it fails
        status = hf.enable(replace=mode == "bridge-replace")
        import transformers.models.dinat.modeling_dinat as md
    results = []
    for case in torch.load(cases_path, weights_only=False):
        model = getattr(md, case["cls"])(md.DinatConfig(**case["config"])).eval()
        model.load_state_dict(case["state_dict"], strict=True)
        with torch.no_grad():
            out = model(case["x"], output_attentions=case["output_attentions"])
        results.append(dict(feature_maps=getattr(out, "feature_maps", None),
                            last_hidden_state=getattr(out, "last_hidden_state", None), attentions=out.attentions))
    torch.save(dict(transformers=transformers.__version__, results=results,
                    status=None if status is None else vars(status)), out_path)


if __name__ == "__main__":
    main(*sys.argv[1:])
