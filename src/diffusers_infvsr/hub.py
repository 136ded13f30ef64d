# Copyright 2026 The diffusers-infvsr authors. All rights reserved.
#
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#
#     http://www.apache.org/licenses/LICENSE-2.0
#
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""Hub layout of a saved pipeline: remote code for diffusers-only users, and the model card.

A folder saved by `InfVSRPipeline.save_pretrained` is laid out as diffusers expects of a community pipeline with custom
components, so `DiffusionPipeline.from_pretrained(folder_or_repo_id, trust_remote_code=True)` loads it without this
package: `model_index.json` names `["pipeline_infvsr", "InfVSRPipeline"]` as `_class_name`, each custom component as
`[module, class]` with the module's source in the component's folder, and the pipeline's other modules sit beside
`pipeline_infvsr.py`. The sources are the package's own modules, copied at save time; only their relative imports are
rewritten to that layout.
"""

import importlib.util
import inspect
import json
import os
import re
import sys
from pathlib import Path

from diffusers.pipelines.pipeline_loading_utils import LOADABLE_CLASSES, _unwrap_model
from diffusers.utils import DIFFUSERS_DYNAMIC_MODULE_NAME


# `from .a.b import c` and `import .a` lines, as diffusers' remote-code loader finds them.
_RELATIVE_IMPORT = re.compile(r"^(\s*from\s+)\.([\w.]+)(\s+import\b)", flags=re.MULTILINE)
MODEL_CARD_REPO_PLACEHOLDER = "<this repository>"


def _module_file(module_name: str) -> Path:
    return Path(inspect.getsourcefile(sys.modules[module_name]))


def _is_custom(component) -> bool:
    """Whether a component's class comes from neither diffusers nor transformers (it then ships as remote code)."""
    return type(component).__module__.split(".")[0] not in LOADABLE_CLASSES


def write_remote_code(pipeline, save_directory: str | os.PathLike) -> None:
    r"""
    Make a folder written by `DiffusionPipeline.save_pretrained` loadable by diffusers alone (`trust_remote_code=True`):
    copy the source of every custom component into its folder, the pipeline's module and the modules it imports
    beside `model_index.json`, and point `model_index.json` at them.

    Example:

    ```py
    >>> pipe.save_pretrained("InfVSR-diffusers")  # calls write_remote_code
    >>> pipe = DiffusionPipeline.from_pretrained("InfVSR-diffusers", trust_remote_code=True)  # no diffusers_infvsr
    ```
    """
    save_directory = Path(save_directory)
    index_path = save_directory / "model_index.json"
    model_index = json.loads(index_path.read_text(encoding="utf-8"))

    component_folders = {}  # module basename -> component folder
    for name, component in pipeline.components.items():
        component = _unwrap_model(component)  # the class under `torch.compile` (as diffusers records it)
        if name not in model_index or model_index[name][0] is None or not _is_custom(component):
            continue
        module_name = type(component).__module__
        basename = module_name.rsplit(".", 1)[-1]
        (save_directory / name / f"{basename}.py").write_text(
            _module_file(module_name).read_text(encoding="utf-8"), encoding="utf-8"
        )
        component_folders[basename] = name
        model_index[name] = [basename, type(component).__name__]

    # The pipeline module and, recursively, the modules it imports relatively, at the top of the folder.
    pending, written = [type(pipeline).__module__], set()
    while pending:
        module_name = pending.pop()
        basename = module_name.rsplit(".", 1)[-1]
        if basename in written:
            continue
        written.add(basename)
        package = sys.modules[module_name].__package__

        def rewrite(match):
            imported = importlib.util.resolve_name("." + match.group(2), package)
            imported_basename = imported.rsplit(".", 1)[-1]
            if imported_basename in component_folders:
                return f"{match.group(1)}.{component_folders[imported_basename]}.{imported_basename}{match.group(3)}"
            pending.append(imported)
            return f"{match.group(1)}.{imported_basename}{match.group(3)}"

        source = _RELATIVE_IMPORT.sub(rewrite, _module_file(module_name).read_text(encoding="utf-8"))
        (save_directory / f"{basename}.py").write_text(source, encoding="utf-8")

    model_index["_class_name"] = [type(pipeline).__module__.rsplit(".", 1)[-1], type(pipeline).__name__]
    index_path.write_text(json.dumps(model_index, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def uses_package_modules(pipeline_class) -> bool:
    """False for a pipeline class that diffusers loaded from a repository's remote code."""
    return not pipeline_class.__module__.startswith(DIFFUSERS_DYNAMIC_MODULE_NAME)


def package_class_name(config: dict, pipeline_class) -> dict:
    r"""
    A `model_index.json` dict in the Hub layout, with `_class_name` naming `pipeline_class` itself rather than the
    repository's copy of it, so that loading through `pipeline_class` runs none of the repository's code.
    """
    class_name = config.get("_class_name")
    if (
        uses_package_modules(pipeline_class)
        and isinstance(class_name, (list, tuple))
        and class_name[1] == pipeline_class.__name__
    ):
        config = {**config, "_class_name": pipeline_class.__name__}
    return config


def package_component_modules(config: dict, pipeline_class) -> dict:
    r"""
    A `model_index.json` dict in the Hub layout, with every component whose remote-code module is one of
    `pipeline_class`'s own component modules naming that module, so diffusers loads the installed classes.
    """
    if not uses_package_modules(pipeline_class):
        return config
    config = dict(config)
    for name, component_class in inspect.get_annotations(pipeline_class.__init__, eval_str=True).items():
        entry = config.get(name)
        if (
            inspect.isclass(component_class)
            and isinstance(entry, (list, tuple))
            and list(entry) == [component_class.__module__.rsplit(".", 1)[-1], component_class.__name__]
        ):
            config[name] = [component_class.__module__, component_class.__name__]
    return config


def render_model_card(template: str | os.PathLike, repo_id: str) -> str:
    """The model card `template` with its usage snippets pointing at `repo_id` (a Hub id or a local folder)."""
    return Path(template).read_text(encoding="utf-8").replace(MODEL_CARD_REPO_PLACEHOLDER, repo_id)


def default_model_card_path() -> Path | None:
    """`model_card.md` of a source checkout, or the copy installed under `<prefix>/share/diffusers-infvsr`."""
    for candidate in (
        Path(__file__).resolve().parents[2] / "model_card.md",
        Path(sys.prefix) / "share" / "diffusers-infvsr" / "model_card.md",
    ):
        if candidate.is_file():
            return candidate
    return None
