"""Export-friendly models: ONNX and ``torch.export`` with standard ops only.

The op's ``export`` backend (:mod:`dinat_backbone.ops.export`) computes neighbourhood attention
with plain, decomposable tensor ops and indices derived from the map size inside the graph, so one
exported graph serves every input size. :func:`export_mode` makes every ``na2d`` call of the
calling thread run it, and DiNAT blocks fold their small-map padding into the graph::

    from dinat_backbone.export import export_mode
    with export_mode():
        onnx_program = torch.onnx.export(model, (x,), dynamo=True, dynamic_shapes=...)

``tools/export_onnx.py`` is the command-line front end.
"""
from .ops.export import axis_indices, export_mode, exporting, na2d_export

__all__ = ["export_mode", "exporting", "na2d_export", "axis_indices"]
