"""Engines from ONNX with Polygraphy's loaders: the ONNX parsed (``NetworkFromOnnxPath``), the
builder configured (``CreateConfig``: FP16, sparse weights, the workspace pool, an optimisation
``Profile`` for a max batch, the timing cache), the engine built reusing and updating that cache
(``EngineFromNetwork``) and saved (``SaveEngine``); with sparse weights, TensorRT's engine
inspector writes the layer information beside it. The same settings as ``trtexec_command``.

Polygraphy's loaders are lazy: :func:`engine_loaders` only describes the build (it needs tensorrt
importable for its enums, nothing else); calling ``loaders.save()`` runs it. Written against
TensorRT 10 and Polygraphy 0.49+, and not yet run on a GPU.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, NamedTuple

from hwprune.errors import HwpruneError
from hwprune.io import write_text_atomic
from hwprune.runtime.trt_config import EngineConfig, layer_info_path
from hwprune.runtime.trt_env import NO_POLYGRAPHY, polygraphy_call, require, tensorrt


class EngineLoaders(NamedTuple):
    """One build as Polygraphy's loaders, each a step of the next: calling ``save`` runs them all."""

    network: Any  # NetworkFromOnnxPath
    config: Any  # CreateConfig
    build: Any  # EngineFromNetwork
    save: Any  # SaveEngine


def engine_loaders(config: EngineConfig) -> EngineLoaders:
    """The build ``config`` describes, as loaders not yet run. Profiling verbosity is detailed only
    with sparse weights (where the layer information is read), as in the trtexec line."""
    trt = tensorrt()
    try:
        from polygraphy.backend.trt import CreateConfig, EngineFromNetwork, NetworkFromOnnxPath, Profile, SaveEngine
    except ImportError:
        raise HwpruneError(NO_POLYGRAPHY) from None

    shapes = config.profile_shapes()
    profiles = None if shapes is None else [Profile().add(config.input_name, *shapes)]
    verbosity = trt.ProfilingVerbosity.DETAILED if config.sparse_weights else trt.ProfilingVerbosity.LAYER_NAMES_ONLY
    network = NetworkFromOnnxPath(str(config.onnx))
    create = CreateConfig(fp16=config.fp16, sparse_weights=config.sparse_weights, profiles=profiles,
                          memory_pool_limits={trt.MemoryPoolType.WORKSPACE: config.workspace_mib << 20},
                          load_timing_cache=str(config.timing_cache), profiling_verbosity=verbosity)
    build = EngineFromNetwork(network, create, save_timing_cache=str(config.timing_cache))
    return EngineLoaders(network, create, build, SaveEngine(build, str(config.engine)))


def build_engine(config: EngineConfig) -> Path:
    """Build and save the engine (and, with sparse weights, its layer information)."""
    require("build a TensorRT engine")
    with polygraphy_call(f"TensorRT could not build an engine from {config.onnx}"):
        engine = engine_loaders(config).save()
    if config.sparse_weights:
        trt = tensorrt()
        info = engine.create_engine_inspector().get_engine_information(trt.LayerInformationFormat.JSON)
        write_text_atomic(layer_info_path(config.engine), info)
    return config.engine
