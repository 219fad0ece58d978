// The selection rules: which modules of a model become mixup points when the user names none.
// This file is their one description. Both front doors run them: the Python package on
// nn.Module trees (python/manifold_mixup/selection.py, through manifold_mixup._C) and
// select_points below on TorchScript modules (the C ABI and JitHook). A front door only says,
// for each module of its tree, the facts of ModuleFacts; the rules, the class names they look
// for and the sentence saying which rule chose what are all here.
//
// First rule that yields a module wins (numbered as in the README and the reference; rule 1 is
// the user's own list, which the front doors handle themselves):
//   2. modules of class ManifoldMixupModule (the marker);
//   3. the root is a fastai TabularModel: every Linear;
//   4. every fastai UnetBlock (the decoder of a U-Net), outermost only;
//   5. blocks, outermost only: modules whose own class name contains "block" or "bottleneck",
//      any case (residual blocks), and transformer layers: torch.nn's TransformerEncoderLayer
//      and TransformerDecoderLayer, and a class named *Layer with modules of its own held in a
//      list named layer or layers (Hugging Face: bert.encoder.layer.0, model.layers.0);
//   6. every module that is not non-mixable (see ModuleFacts::non_mixable);
//   7. none: the front door raises, telling the user to wrap modules or name them.
// "Outermost only": a module inside another one the rule accepts is left out (a ConvBlock
// inside a ResBlock, the attention inside a transformer layer); the model itself hides nothing.
// Mixing inside a residual unit mixes its branch but not its skip connection.
// Never chosen by any rule: containers (a class named Sequential, ModuleList, ModuleDict,
// ParameterList or ParameterDict, or any class without a forward: they compute nothing of their
// own). Never chosen by rules 3 to 6: fastai's AWD_LSTM and SentenceEncoder and everything
// inside them (recurrent internals, tuple outputs, a module run once per bptt chunk), fastai's
// text heads LinearDecoder and PoolingLinearClassifier (tuple outputs), the regularisers
// DropBlock2d, DropBlock3d, DropPath and StochasticDepth (timm, torchvision: like dropout, their
// output is their input masked), and modules seen to derive from only some of a multi-input
// model's inputs (ModuleFacts::partial_inputs). The root is a candidate only where the front
// door can mix its output (Python's forward hooks can; a TorchScript root has no call site to
// rewrite).
#pragma once

#include <torch/csrc/jit/api/module.h>

#include <cstddef>
#include <string>
#include <vector>

namespace manifold_mixup {

// What the rules read about one module. A front door lists every module of its tree once,
// root first, each parent before its children (the order of named_modules()).
struct ModuleFacts {
  std::string path;  // dotted path from the root ("layer2.1"); "" is the root
  // The class's own name first, then its base classes' names: Python passes the MRO, so a
  // subclass counts as its base (as isinstance does); TorchScript keeps no bases, only its own.
  std::vector<std::string> class_names;
  bool has_forward = true;   // false for ModuleList, ModuleDict, ...: never called
  bool non_mixable = false;  // excluded by rule 6 only: Python decides it from the public,
                             // mutable non_mixable_module_types; TorchScript by is_non_mixable_class
  // Excluded by rules 3 to 6: a forward showed its output derives from only some of the model's
  // feature inputs (one branch of a multi-input model: mixing there mixes part of each sample
  // while the loss is fully mixed). Python observes it (manifold_mixup.provenance); TorchScript
  // hosts observe no forward before choosing, so it stays false there.
  bool partial_inputs = false;
};

// The rule that chose, and what it chose.
struct RuleChoice {
  int rule = 7;                // 2..6 as above; 7: no rule yielded anything (chosen is empty)
  std::vector<size_t> chosen;  // indices into the facts, in their order
  std::string description;     // "3 modules whose class name contains block or bottleneck"
};

// Runs rules 2 to 6 on the facts of one tree. `root_is_candidate`: whether modules[0] (the
// root) may be chosen. Throws c10::ValueError when modules[0] is not the root (path "").
RuleChoice apply_selection_rules(const std::vector<ModuleFacts>& modules, bool root_is_candidate);

// The class names of the default non-mixable kinds (torch.nn's): Sequential, dropout, batch
// norm and recurrent layers. Python's non_mixable_module_types starts as these torch.nn classes.
const std::vector<std::string>& non_mixable_class_names();

// Whether a class name is one of non_mixable_class_names().
bool is_non_mixable_class(const std::string& class_name);

// Which submodules the selection rules pick when the host names none, and the rule that did.
struct PointSelection {
  std::vector<std::string> names;  // dotted paths from the root ("layer2.1")
  std::string rule;                // e.g. "3 modules whose class name contains block or bottleneck"
};

// The selection rules on a TorchScript module: class names are the last component of the
// TorchScript type name (mangling is in the prefix), non-mixable by is_non_mixable_class, and
// the root is never a candidate. Throws c10::ValueError telling the user to pass names or wrap
// modules in ManifoldMixupModule when no rule yields anything.
PointSelection select_points(const torch::jit::Module& root);

}  // namespace manifold_mixup
