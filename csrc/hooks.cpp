#include "hooks.h"

#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/library.h>

#include <algorithm>
#include <map>
#include <mutex>
#include <unordered_map>
#include <unordered_set>

namespace manifold_mixup {

using torch::jit::Graph;
using torch::jit::GraphFunction;
using torch::jit::Node;
using torch::jit::Value;

namespace {

// --- the registry: module object -> (mixer, point index) -----------------------------------

struct PointEntry {
  std::shared_ptr<Mixer> mixer;
  int64_t index;
};

std::mutex& registry_mutex() {
  static std::mutex m;
  return m;
}
// Keyed by object identity: only the named instance of a shared type is found here.
std::unordered_map<const c10::ivalue::Object*, PointEntry>& registry() {
  static std::unordered_map<const c10::ivalue::Object*, PointEntry> r;
  return r;
}
// Module types whose methods a hook has replaced; one hook per type at a time.
std::unordered_set<const c10::ClassType*>& rewritten_types() {
  static std::unordered_set<const c10::ClassType*> s;
  return s;
}

// manifold_mixup::mix_point: boxed, because its first argument is any module object.
void mix_point_kernel(const c10::OperatorHandle&, torch::jit::Stack* stack) {
  at::Tensor x = torch::jit::pop(*stack).toTensor();
  c10::IValue point = torch::jit::pop(*stack);
  std::optional<PointEntry> entry;
  if (point.isObject()) {
    std::lock_guard<std::mutex> lock(registry_mutex());
    auto it = registry().find(&point.toObjectRef());
    if (it != registry().end()) entry = it->second;
  }
  torch::jit::push(*stack, entry ? entry->mixer->point_output(entry->index, x) : x);
}

std::vector<std::string> split_path(const std::string& path) {
  std::vector<std::string> atoms;
  size_t start = 0;
  while (true) {
    const size_t dot = path.find('.', start);
    atoms.push_back(path.substr(start, dot == std::string::npos ? std::string::npos : dot - start));
    if (dot == std::string::npos) break;
    start = dot + 1;
  }
  return atoms;
}

// The GetAttr names leading from `self` to `v`, or false when v is not such a chain.
bool attr_chain(Value* v, const Value* self, std::vector<std::string>* out) {
  out->clear();
  while (v != self) {
    Node* n = v->node();
    if (n->kind() != c10::prim::GetAttr) return false;
    out->push_back(n->s(c10::attr::name));
    v = n->input(0);
  }
  std::reverse(out->begin(), out->end());
  return true;
}

void collect_nodes(torch::jit::Block* block, std::vector<Node*>* out) {
  for (Node* n : block->nodes()) {
    out->push_back(n);
    for (torch::jit::Block* b : n->blocks()) collect_nodes(b, out);
  }
}

const c10::Symbol& mix_point_symbol() {
  static const c10::Symbol s = c10::Symbol::fromQualString("manifold_mixup::mix_point");
  return s;
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(manifold_mixup, m) {
  // CONSERVATIVE: the op may return its input unchanged, and must never be moved or removed.
  m.def(torch::schema("mix_point(Any point, Tensor x) -> Tensor", c10::AliasAnalysisKind::CONSERVATIVE),
        torch::CppFunction::makeFromBoxedFunction<&mix_point_kernel>());
}

// --- install / remove ----------------------------------------------------------------------

// One ancestor type whose methods are replaced by rewritten copies while the hook is installed.
struct TypeRewrite {
  c10::ClassTypePtr type;
  std::vector<torch::jit::Function*> originals;         // in the type's method order
  std::vector<std::shared_ptr<Graph>> graphs;           // copies, rewritten
  std::vector<std::unique_ptr<GraphFunction>> replacements;
};

struct JitHook::Impl {
  std::shared_ptr<Mixer> mixer;
  torch::jit::Module root;
  std::vector<std::string> names;
  std::string selection;
  std::vector<TypeRewrite> rewrites;
  std::vector<const c10::ivalue::Object*> objects;
  bool installed = false;

  TypeRewrite& rewrite_for(const torch::jit::Module& m) {
    for (auto& r : rewrites)
      if (r.type == m.type()) return r;
    TypeRewrite r;
    r.type = m.type();
    for (torch::jit::Function* f : r.type->methods()) {
      f->ensure_defined();
      r.originals.push_back(f);
      r.graphs.push_back(torch::jit::toGraphFunction(*f).graph()->copy());
    }
    rewrites.push_back(std::move(r));
    return rewrites.back();
  }

  // Inserts mix_point after every call of the submodule at `atoms` made from one of its
  // ancestors' methods; returns how many call sites there are. In `dry` mode only counts
  // (and returns -1 when a call site's result is not a single Tensor).
  int64_t instrument(const std::vector<std::string>& atoms, const std::string& path, bool dry) {
    int64_t sites = 0;
    torch::jit::Module ancestor = root;
    std::vector<std::string> chain;
    for (size_t k = 0; k < atoms.size(); ++k) {
      const std::vector<std::string> rel(atoms.begin() + k, atoms.end());
      TypeRewrite* r = dry ? nullptr : &rewrite_for(ancestor);
      const size_t n_methods = ancestor.type()->methods().size();
      for (size_t mi = 0; mi < n_methods; ++mi) {
        std::shared_ptr<Graph> g =
            r ? r->graphs[mi] : torch::jit::toGraphFunction(*ancestor.type()->methods()[mi]).graph();
        std::vector<Node*> nodes;
        collect_nodes(g->block(), &nodes);
        for (Node* call : nodes) {
          if (call->kind() != c10::prim::CallMethod || call->s(c10::attr::name) != "forward") continue;
          if (!attr_chain(call->input(0), g->inputs().at(0), &chain) || chain != rel) continue;
          const bool tensor_out = call->outputs().size() == 1 &&
                                  call->output()->type()->isSubtypeOf(*c10::TensorType::get());
          if (dry) {
            if (!tensor_out) return -1;
            ++sites;
            continue;
          }
          TORCH_CHECK(tensor_out, "'", path, "' cannot be a mixup point: its forward returns ",
                      call->output(0)->type()->repr_str(), ", not a single Tensor");
          ++sites;
          Value* out = call->output();
          if (out->uses().size() == 1 && out->uses()[0].user->kind() == mix_point_symbol()) continue;
          Node* mix = g->create(mix_point_symbol(), {call->input(0), out}, 1);
          mix->output()->setType(c10::TensorType::get());
          mix->insertAfter(call);
          out->replaceAllUsesAfterNodeWith(mix, mix->output());
        }
      }
      if (k + 1 < atoms.size()) ancestor = ancestor.attr(atoms[k]).toModule();
    }
    return sites;
  }

  // The submodule at `path`, or an error naming the path and the part that is missing.
  torch::jit::Module resolve(const std::string& path) const {
    TORCH_CHECK(!path.empty(), "mixup point names must not be empty (the root is the input point)");
    torch::jit::Module m = root;
    std::string so_far;
    for (const std::string& atom : split_path(path)) {
      const bool ok = !atom.empty() && m.hasattr(atom) && m.attr(atom).isModule();
      TORCH_CHECK(ok, "no submodule named '", path, "'", so_far.empty() ? std::string() :
                  " ('" + so_far + "' has no submodule '" + atom + "')");
      m = m.attr(atom).toModule();
      so_far += (so_far.empty() ? "" : ".") + atom;
    }
    return m;
  }

  void swap_methods(bool to_replacements) {
    for (auto& r : rewrites) {
      for (torch::jit::Function* f : std::vector<torch::jit::Function*>(r.type->methods()))
        r.type->unsafeRemoveMethod(f->name());
      for (size_t i = 0; i < r.originals.size(); ++i)
        r.type->addMethod(to_replacements ? r.replacements[i].get() : r.originals[i]);
    }
  }
};

JitHook::JitHook(std::shared_ptr<Mixer> mixer, torch::jit::Module root, std::vector<std::string> names)
    : impl_(std::make_unique<Impl>()) {
  TORCH_CHECK(mixer, "JitHook: the mixer is null");
  TORCH_CHECK(!mixer->in_batch(), "cannot install mixup points during a batch (end it first)");
  TORCH_CHECK(mixer->num_points() == 0, "the mixer already has ", mixer->num_points(),
              " mixup points (remove their hook first; one hook per mixer)");
  Impl& d = *impl_;
  d.mixer = std::move(mixer);
  d.root = std::move(root);
  const bool automatic = names.empty();
  if (automatic) {
    PointSelection s = select_points(d.root);
    // A candidate that is never called, or whose forward returns no single Tensor, cannot mix.
    size_t skipped = 0;
    for (const std::string& n : s.names) {
      if (d.instrument(split_path(n), n, /*dry=*/true) > 0) d.names.push_back(n);
      else ++skipped;
    }
    TORCH_CHECK(!d.names.empty(), "no mixup point found: none of the ", s.rule,
                " is called with a single Tensor result from its parent; pass names");
    d.selection = s.rule + (skipped ? " (" + std::to_string(skipped) + " skipped: not called, or "
                                      "no single Tensor result)" : std::string());
  } else {
    d.names = std::move(names);
    d.selection = std::to_string(d.names.size()) + " named by the host";
  }

  std::vector<const c10::ivalue::Object*> objects;
  for (const std::string& n : d.names) {
    const torch::jit::Module m = d.resolve(n);
    const auto* obj = m._ivalue().get();
    TORCH_CHECK(std::find(objects.begin(), objects.end(), obj) == objects.end(),
                "'", n, "' is named twice (or is the same module as another point)");
    objects.push_back(obj);
  }
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (size_t i = 0; i < objects.size(); ++i)
      TORCH_CHECK(!registry().count(objects[i]), "'", d.names[i], "' is already a mixup point of another hook");
  }
  // Rewrite copies; nothing the host can see changes until the swap below.
  for (const std::string& n : d.names) {
    TORCH_CHECK(d.instrument(split_path(n), n, /*dry=*/false) > 0, "'", n, "' cannot be a mixup point: ",
                "no method of its parent calls it (was the module frozen or inlined?)");
  }
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    for (auto& r : d.rewrites)
      TORCH_CHECK(!rewritten_types().count(r.type.get()), "module type ", r.type->repr_str(),
                  " is already rewritten by another installed hook (remove it first)");
    for (auto& r : d.rewrites) {
      for (size_t i = 0; i < r.originals.size(); ++i) {
        auto f = std::make_unique<GraphFunction>(r.originals[i]->qualname(), r.graphs[i], nullptr);
        f->setSchema(r.originals[i]->getSchema());
        r.replacements.push_back(std::move(f));
      }
    }
    for (size_t i = 0; i < d.names.size(); ++i) {
      const int64_t index = d.mixer->add_point(d.names[i]);
      registry()[objects[i]] = PointEntry{d.mixer, index};
    }
    for (auto& r : d.rewrites) rewritten_types().insert(r.type.get());
    d.swap_methods(/*to_replacements=*/true);
  }
  d.objects = std::move(objects);
  d.installed = true;
}

void JitHook::remove() {
  Impl& d = *impl_;
  if (!d.installed) return;
  TORCH_CHECK(!d.mixer->in_batch(), "cannot remove mixup points during a batch (end it first)");
  {
    std::lock_guard<std::mutex> lock(registry_mutex());
    d.swap_methods(/*to_replacements=*/false);
    for (auto& r : d.rewrites) rewritten_types().erase(r.type.get());
    for (const auto* obj : d.objects) registry().erase(obj);
  }
  d.mixer->clear_points();
  d.rewrites.clear();
  d.objects.clear();
  d.installed = false;
}

JitHook::~JitHook() {
  if (!impl_ || !impl_->installed) return;
  if (impl_->mixer->in_batch()) impl_->mixer->end_batch();
  try {
    remove();
  } catch (...) {  // a destructor must not throw; remove() only throws in a batch
  }
}

bool JitHook::installed() const { return impl_->installed; }
const std::vector<std::string>& JitHook::point_names() const { return impl_->names; }
const std::string& JitHook::selection() const { return impl_->selection; }
const std::shared_ptr<Mixer>& JitHook::mixer() const { return impl_->mixer; }
const torch::jit::Module& JitHook::module() const { return impl_->root; }

int64_t JitHook::mix_count(size_t i) const {
  TORCH_CHECK(impl_->installed, "mix_count: the hook has been removed");
  TORCH_CHECK(i < impl_->names.size(), "mix_count: point index ", i, " out of range [0, ",
              impl_->names.size(), ")");
  return impl_->mixer->point_mixes().at(i);
}

at::Tensor forward(Mixer* mixer, torch::jit::Module& module, const at::Tensor& x) {
  TORCH_CHECK(x.defined(), "forward: the input is undefined");
  at::Tensor in = x;
  if (mixer) {
    TORCH_CHECK(mixer->in_batch(), "forward: no batch has begun (call begin_batch first)");
    TORCH_CHECK(x.dim() >= 1 && x.size(0) == mixer->batch_size(), "forward: the input must have the ",
                "batch's ", mixer->batch_size(), " samples along dim 0, got shape ", x.sizes());
    in = mixer->mix_input(x);
  }
  c10::IValue out = module.forward({in});
  TORCH_CHECK(out.isTensor(), "forward: the module returned ", out.tagKind(), ", not a Tensor");
  return out.toTensor();
}

}  // namespace manifold_mixup
