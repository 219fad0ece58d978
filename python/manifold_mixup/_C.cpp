// pybind11 module manifold_mixup._C: the Mixer. The mixup points are Python
// (manifold_mixup/points.py), so that torch.compile traces them.
// It links libmanifold_mixup_core (lib/ beside it), whose loading registers the manifold_mixup
// ops (torch.ops.manifold_mixup.*): once per process, whichever loads the core first (this
// module, the C library or a C++ host).
#include <torch/csrc/autograd/python_variable.h>
#include <torch/csrc/utils/pybind.h>

#include <memory>
#include <set>
#include <string>

#include "errors.h"
#include "mixer.h"
#include "selection.h"

namespace py = pybind11;
using manifold_mixup::LamMode;
using manifold_mixup::Method;
using manifold_mixup::Mixer;
using manifold_mixup::MixerOptions;


void bind_selection(py::module_& m);

namespace {
// The mixed classification losses' options from torch's keyword arguments.
manifold_mixup::ClassLossOptions class_loss_options(const std::optional<at::Tensor>& weight,
                                                    int64_t ignore_index, double label_smoothing,
                                                    const std::string& reduction) {
  manifold_mixup::ClassLossOptions o;
  o.weight = weight.value_or(at::Tensor());
  o.ignore_index = ignore_index;
  o.label_smoothing = label_smoothing;
  MM_CHECK_ARG(reduction == "none" || reduction == "mean" || reduction == "sum",
               "reduction must be 'none', 'mean' or 'sum', got '", reduction, "'");
  o.reduction = reduction == "none" ? at::Reduction::None
              : reduction == "mean" ? at::Reduction::Mean : at::Reduction::Sum;
  return o;
}
LamMode lam_mode_of(const std::string& name) {
  MM_CHECK_ARG(name == "sample" || name == "batch",
               "lam_mode must be 'sample' (one weight per sample) or 'batch' (one per batch), got '",
               name, "'");
  return name == "sample" ? LamMode::Sample : LamMode::Batch;
}

const char* lam_mode_name(LamMode mode) { return mode == LamMode::Sample ? "sample" : "batch"; }

// Python's patchup=None|"soft"|"hard".
Method method_of(const std::optional<std::string>& patchup) {
  MM_CHECK_ARG(!patchup || *patchup == "soft" || *patchup == "hard",
               "patchup must be None, 'soft' or 'hard', got '", patchup.value_or(""), "'");
  return !patchup ? Method::Mixup : *patchup == "soft" ? Method::PatchUpSoft : Method::PatchUpHard;
}

py::object patchup_name(Method method) {
  if (method == Method::Mixup) return py::none();
  return py::str(method == Method::PatchUpSoft ? "soft" : "hard");
}

// The settings beyond alpha, input_mixup and seed, by their Python names: what a pickle keeps.
py::dict settings_of(const Mixer& m) {
  py::dict d;
  d["lam_mode"] = lam_mode_name(m.lam_mode());
  d["fold"] = m.fold();
  d["prob"] = m.prob();
  d["add_noise"] = m.options().add_noise;
  d["mult_noise"] = m.options().mult_noise;
  d["patchup"] = patchup_name(m.method());
  d["patchup_block"] = m.options().patchup_block;
  d["patchup_gamma"] = m.options().patchup_gamma;
  return d;
}

// The keyword arguments after alpha, input_mixup and seed, into the options.
void apply_settings(MixerOptions& o, const py::dict& kwargs) {
  auto get = [&](const char* key, auto fallback) {
    return kwargs.contains(key) && !kwargs[key].is_none() ? kwargs[key].cast<decltype(fallback)>()
                                                          : fallback;
  };
  for (const auto& item : kwargs) {
    const auto key = item.first.cast<std::string>();
    static const std::set<std::string> known{"lam_mode", "fold", "prob", "add_noise", "mult_noise",
                                             "patchup", "patchup_block", "patchup_gamma"};
    if (!known.count(key)) throw py::type_error("Mixer() got an unexpected keyword argument '" + key + "'");
  }
  o.lam_mode = lam_mode_of(get("lam_mode", std::string("sample")));
  o.fold = get("fold", true);
  o.prob = get("prob", 1.0);
  o.add_noise = get("add_noise", 0.0);
  o.mult_noise = get("mult_noise", 0.0);
  o.method = method_of(kwargs.contains("patchup") && !kwargs["patchup"].is_none()
                           ? std::optional<std::string>(kwargs["patchup"].cast<std::string>())
                           : std::nullopt);
  o.patchup_block = get("patchup_block", int64_t(7));
  o.patchup_gamma = get("patchup_gamma", 0.9);
}
}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Native core of manifold_mixup: the Mixer (C++ on libtorch).";

  // Every call keeps the GIL: the Mixer has no lock of its own, and the GIL is what keeps two
  // Python threads from tearing its state (lam and perm of one batch, the chosen point of
  // another, counters half counted). Releasing it around a call that reads the state is no
  // safer than around one that writes it: a reader copies lam and perm while begin_batch
  // replaces them. The points mix through torch.ops.manifold_mixup.mix on the batch's own lam and
  // perm, and torch.ops runs an op with the GIL released.
  py::class_<Mixer, std::shared_ptr<Mixer>>(m, "Mixer", R"doc(
Per-batch state of manifold mixup: weights lam ~ Beta(alpha, alpha), one per sample
(lam_mode='sample') or one per batch ('batch'), folded to max(lam, 1-lam) unless fold=False;
a permutation of the batch, the mixup point chosen for the batch, and whether it mixed. With
probability 1 - prob a batch is skipped: it draws nothing more and no point mixes. add_noise and
mult_noise add Noisy Feature Mixup's noise after the mix; patchup='soft' or 'hard' mixes feature
maps by PatchUp's block mask (patchup_block, patchup_gamma) instead.
seed=None draws from torch's default generators (torch.manual_seed makes runs repeatable);
an int seed gives the Mixer its own generator (e.g. seed + rank under DistributedDataParallel).)doc")
      .def(py::init([](double alpha, bool input_mixup, std::optional<uint64_t> seed,
                       const py::kwargs& settings) {
             MixerOptions o;
             o.alpha = alpha;
             o.input_mixup = input_mixup;
             o.seed = seed;
             apply_settings(o, settings);
             return std::make_shared<Mixer>(o);
           }),
           py::arg("alpha") = 0.4, py::arg("input_mixup") = true, py::arg("seed") = py::none(),
           "Settings by keyword: lam_mode='sample'|'batch', fold=True, prob=1.0, add_noise=0.0, "
           "mult_noise=0.0, patchup=None|'soft'|'hard', patchup_block=7, patchup_gamma=0.9.")
      .def_property("alpha", &Mixer::alpha, &Mixer::set_alpha)
      .def_property("input_mixup", &Mixer::input_mixup, &Mixer::set_input_mixup)
      .def_property_readonly("seed", &Mixer::seed)
      .def_property_readonly("lam_mode", [](const Mixer& m) { return lam_mode_name(m.lam_mode()); })
      .def_property_readonly("fold", &Mixer::fold)
      .def_property_readonly("prob", &Mixer::prob)
      .def_property_readonly("patchup", [](const Mixer& m) { return patchup_name(m.method()); },
                             "None (mixup), 'soft' or 'hard' (PatchUp).")
      .def_property_readonly("patchup_block", [](const Mixer& m) { return m.options().patchup_block; })
      .def_property_readonly("patchup_gamma", [](const Mixer& m) { return m.options().patchup_gamma; })
      .def_property_readonly("settings", &settings_of,
                             "The settings after alpha, input_mixup and seed, as keyword arguments.")
      .def_property_readonly("add_noise", [](const Mixer& m) { return m.options().add_noise; })
      .def_property_readonly("mult_noise", [](const Mixer& m) { return m.options().mult_noise; })
      .def_property_readonly("key", &Mixer::key,
                             "The batch's Philox key for PatchUp's mask and the noise (0-d int64).")
      .def_property_readonly("noise", &Mixer::noise,
                             "The batch's noise levels (float32 [2]: additive, multiplicative, each "
                             "times its Beta(2, 5) draw); None without noise.")
      .def("add_point", &Mixer::add_point, py::arg("name"))
      .def("clear_points", &Mixer::clear_points)
      .def("retain_points", &Mixer::retain_points, py::arg("indices"),
           "Keeps only the points at these (increasing) indices, renumbered, with their counters.")
      .def_property_readonly("num_points", &Mixer::num_points)
      .def_property_readonly("point_names", &Mixer::point_names)
      .def("begin_batch", &Mixer::begin_batch, py::arg("batch_size"), py::arg("device"),
           "Draws lam, perm and the mixup point for a batch; returns the chosen point "
           "(an index, INPUT_POINT or NO_POINT).")
      .def_property_readonly("in_batch", &Mixer::in_batch)
      .def_property_readonly("chosen", &Mixer::chosen)
      .def_property_readonly("batch_size", &Mixer::batch_size)
      .def_property_readonly("lam", &Mixer::lam)
      .def_property_readonly("perm", &Mixer::perm)
      .def_property_readonly("target_weights", &Mixer::target_weights,
                             "The weight of each sample's own target in the mixed losses: lam, "
                             "unless the method weighs targets otherwise (PatchUp).")
      .def_property_readonly("chosen_tensor", &Mixer::chosen_tensor,
                             "chosen as a 0-d int64 tensor on the batch's device.")
      .def_property_readonly("mixed", &Mixer::mixed,
                             "Whether this batch mixed (the input, or the chosen point's output).")
      .def("mix", &Mixer::mix, py::arg("t"))
      .def("mix_input", &Mixer::mix_input, py::arg("x"))
      .def("begin_forward", &Mixer::begin_forward,
           "A further forward pass of the model starts in this batch (the first needs no call).")
      .def("point_output", &Mixer::point_output, py::arg("point"), py::arg("out"))
      .def("record_point_mixed",
           [](Mixer& m, int64_t point, int64_t calls, const std::optional<at::Tensor>& mask) {
             m.record_point_mixed(point, calls, mask.value_or(at::Tensor()));
           },
           py::arg("point"), py::arg("calls"), py::arg("mask") = py::none(),
           "Records that the chosen point ran `calls` times in this forward and its first output was "
           "mixed (for PatchUp, with the mask the patchup op returned).")
      .def("mixed_loss", &Mixer::mixed_loss, py::arg("loss_own"), py::arg("loss_other"))
      .def("mixed_cross_entropy",
           [](const Mixer& m, const at::Tensor& logits, const at::Tensor& target,
              std::optional<at::Tensor> weight, int64_t ignore_index, double label_smoothing,
              const std::string& reduction) {
             return m.mixed_cross_entropy(
                 logits, target, class_loss_options(weight, ignore_index, label_smoothing, reduction));
           },
           py::arg("logits"), py::arg("target"), py::kw_only(), py::arg("weight") = py::none(),
           py::arg("ignore_index") = -100, py::arg("label_smoothing") = 0.0,
           py::arg("reduction") = "none", R"doc(
Mixed cross-entropy of logits [B, C, ...] against int64 targets [B, ...], from one log-softmax,
weighted, ignored and reduced as torch's cross_entropy with these arguments ('mean' divides by the
kept targets' class weights mixed like the targets). 'none' (the default) gives [B, ...].)doc")
      .def("mixed_nll_loss",
           [](const Mixer& m, const at::Tensor& log_probs, const at::Tensor& target,
              std::optional<at::Tensor> weight, int64_t ignore_index, const std::string& reduction) {
             return m.mixed_nll_loss(log_probs, target,
                                     class_loss_options(weight, ignore_index, 0.0, reduction));
           },
           py::arg("log_probs"), py::arg("target"), py::kw_only(), py::arg("weight") = py::none(),
           py::arg("ignore_index") = -100, py::arg("reduction") = "none",
           "mixed_cross_entropy for log-probabilities, as torch's nll_loss.")
      .def("mix_targets", &Mixer::mix_targets, py::arg("y"))
      .def("end_batch", &Mixer::end_batch)
      .def_property_readonly("batches", &Mixer::batches)
      .def_property_readonly("point_mixes", &Mixer::point_mixes)
      .def_property_readonly("input_mixes", &Mixer::input_mixes)
      .def_property_readonly("repeated_calls", &Mixer::repeated_calls)
      .def_property_readonly("unmixed_batches", &Mixer::unmixed_batches)
      .def_property_readonly("skipped_batches", &Mixer::skipped_batches,
                             "Batches that prob left unmixed (by design; not unmixed_batches).")
      .def("reset_counters", &Mixer::reset_counters)
      .def_readonly_static("NO_POINT", &Mixer::kNoPoint)
      .def_readonly_static("INPUT_POINT", &Mixer::kInputPoint)
      // A pickled Mixer comes back fresh: same settings and seed (its generator restarts from
      // that seed), no points, no batch, no counters. The settings after the seed travel as a
      // dict of keyword arguments, so that a pickle from an older version loads with defaults.
      .def(py::pickle(
          [](const Mixer& mx) {
            return py::make_tuple(mx.alpha(), mx.input_mixup(), mx.seed(), settings_of(mx));
          },
          [](const py::tuple& t) {
            MixerOptions o;
            o.alpha = t[0].cast<double>();
            o.input_mixup = t[1].cast<bool>();
            if (t.size() > 2) o.seed = t[2].cast<std::optional<uint64_t>>();
            apply_settings(o, t.size() > 3 ? t[3].cast<py::dict>() : py::dict());
            return std::make_shared<Mixer>(o);
          }));
  bind_selection(m);
}

// The selection rules (csrc/selection.h), for python/manifold_mixup/selection.py and for tests
// that compare them with the TorchScript front door.
void bind_selection(py::module_& m) {
  namespace mm = manifold_mixup;
  using Facts = std::tuple<std::string, std::vector<std::string>, bool, bool, bool>;
  m.def("apply_selection_rules",
        [](const std::vector<Facts>& modules, bool root_is_candidate) {
          std::vector<mm::ModuleFacts> facts;
          facts.reserve(modules.size());
          for (const auto& [path, class_names, has_forward, non_mixable, partial_inputs] : modules)
            facts.push_back({path, class_names, has_forward, non_mixable, partial_inputs});
          mm::RuleChoice c = mm::apply_selection_rules(facts, root_is_candidate);
          return py::make_tuple(c.rule, c.chosen, c.description);
        },
        py::arg("modules"), py::arg("root_is_candidate"), R"doc(
The selection rules 2 to 6 on one tree: modules is [(path, class_names, has_forward,
non_mixable, partial_inputs)], root first, parents before children; returns (rule, chosen
indices, description), rule 7 and no index when nothing is chosen.)doc");
  m.def("non_mixable_class_names", &mm::non_mixable_class_names,
        "Class names of the default non-mixable kinds (torch.nn classes).");
  m.def("select_points",
        [](const py::object& module) {
          // A ScriptModule from torch.jit.script or torch.jit.load; its _c is the C++ module.
          const py::object c = py::hasattr(module, "_c") ? module.attr("_c") : module;
          if (!py::isinstance<torch::jit::Module>(c))
            throw py::type_error("select_points: module must be a torch.jit.ScriptModule, got " +
                                 py::str(py::type::of(module)).cast<std::string>());
          mm::PointSelection s = mm::select_points(c.cast<torch::jit::Module>());
          return py::make_tuple(s.names, s.rule);
        },
        py::arg("module"), "The selection rules on a TorchScript module, as the C ABI runs them: "
        "(dotted paths, rule).");
}
