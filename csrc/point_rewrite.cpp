#include "point_rewrite.h"

#include <torch/csrc/jit/api/function_impl.h>
#include <torch/csrc/jit/ir/ir.h>

#include <algorithm>
#include <deque>

#include "errors.h"
#include "point_registry.h"
#include "selection.h"

namespace manifold_mixup {

using torch::jit::Graph;
using torch::jit::GraphFunction;
using torch::jit::Node;
using torch::jit::Value;
using Graphs = std::vector<std::shared_ptr<Graph>>;

namespace {

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
  static const c10::Symbol s = c10::Symbol::fromQualString("manifold_mixup::_mix_point");
  return s;
}

// The method graphs of m's type as they run now.
Graphs method_graphs(const torch::jit::Module& m) {
  Graphs graphs;
  for (torch::jit::Function* f : m.type()->methods()) {
    f->ensure_defined();
    graphs.push_back(torch::jit::toGraphFunction(*f).graph());
  }
  return graphs;
}

// Every call of the forward of the submodule at `atoms` (a path from root) made by a method of
// one of its ancestors, found in the graphs graphs_of(ancestor) gives: the ones that run now,
// or the copies being rewritten.
template <typename GraphsOf>
std::vector<Node*> find_call_sites(const torch::jit::Module& root, const std::vector<std::string>& atoms,
                                   GraphsOf&& graphs_of) {
  std::vector<Node*> sites;
  torch::jit::Module ancestor = root;
  std::vector<std::string> chain;
  for (size_t k = 0; k < atoms.size(); ++k) {
    const std::vector<std::string> rel(atoms.begin() + k, atoms.end());
    for (const std::shared_ptr<Graph>& g : graphs_of(ancestor)) {
      std::vector<Node*> nodes;
      collect_nodes(g->block(), &nodes);
      for (Node* n : nodes) {
        if (n->kind() != c10::prim::CallMethod || n->s(c10::attr::name) != "forward") continue;
        if (attr_chain(n->input(0), g->inputs().at(0), &chain) && chain == rel) sites.push_back(n);
      }
    }
    if (k + 1 < atoms.size()) ancestor = ancestor.attr(atoms[k]).toModule();
  }
  return sites;
}

bool returns_one_tensor(const Node* call) {
  return call->outputs().size() == 1 && call->output()->type()->isSubtypeOf(*c10::TensorType::get());
}

// Inserts _mix_point(point, out) after `call`; the rest of the graph uses its result.
void insert_point_after(Node* call) {
  Value* out = call->output();
  // Points inside instances of one shared type reach the same call site: insert once.
  if (out->uses().size() == 1 && out->uses()[0].user->kind() == mix_point_symbol()) return;
  Node* mix = call->owningGraph()->create(mix_point_symbol(), {call->input(0), out}, 1);
  mix->output()->setType(c10::TensorType::get());
  mix->insertAfter(call);
  out->replaceAllUsesAfterNodeWith(mix, mix->output());
}

// The selection rules throw a plain c10::Error when they find nothing: to the caller that is
// an argument (the module) with nothing to mix.
PointSelection select(const torch::jit::Module& root) {
  try {
    return select_points(root);
  } catch (const ArgumentError&) {
    throw;
  } catch (const c10::Error& e) {
    throw ArgumentError(c10::SourceLocation{__func__, __FILE__, static_cast<uint32_t>(__LINE__)},
                        e.what_without_backtrace());
  }
}

}  // namespace

// One ancestor type whose methods are replaced by rewritten copies while the points are in.
struct TypeRewrite {
  c10::ClassTypePtr type;
  std::vector<torch::jit::Function*> originals;  // in the type's method order
  Graphs copies;                                 // rewritten
  std::vector<std::unique_ptr<GraphFunction>> replacements;
};

struct PointRewrite::Impl {
  std::shared_ptr<Mixer> mixer;
  torch::jit::Module root;
  std::vector<std::string> names;
  std::string selection;
  std::deque<TypeRewrite> rewrites;  // a deque: copies_for's references outlive later additions
  std::vector<const c10::ivalue::Object*> objects;
  bool installed = false;

  const Graphs& copies_for(const torch::jit::Module& m) {
    for (auto& r : rewrites)
      if (r.type == m.type()) return r.copies;
    TypeRewrite r;
    r.type = m.type();
    for (torch::jit::Function* f : r.type->methods()) {
      f->ensure_defined();
      r.originals.push_back(f);
      r.copies.push_back(torch::jit::toGraphFunction(*f).graph()->copy());
    }
    rewrites.push_back(std::move(r));
    return rewrites.back().copies;
  }

  // The selection rules' candidates that can mix: called, with a single Tensor result.
  void choose_points() {
    const PointSelection s = select(root);
    size_t skipped = 0;
    for (const std::string& n : s.names) {
      const auto sites = find_call_sites(root, split_path(n), method_graphs);
      if (!sites.empty() && std::all_of(sites.begin(), sites.end(), returns_one_tensor)) names.push_back(n);
      else ++skipped;
    }
    MM_CHECK_ARG(!names.empty(), "no mixup point found: none of the ", s.rule,
                 " is called with a single Tensor result from its parent; pass names");
    selection = s.rule + (skipped ? " (" + std::to_string(skipped) + " skipped: not called, or "
                                    "no single Tensor result)" : std::string());
  }

  // The submodule at `path`, or an error naming the path and the part that is missing.
  torch::jit::Module resolve(const std::string& path) const {
    MM_CHECK_ARG(!path.empty(), "mixup point names must not be empty (the root is the input point)");
    torch::jit::Module m = root;
    std::string so_far;
    for (const std::string& atom : split_path(path)) {
      const bool ok = !atom.empty() && m.hasattr(atom) && m.attr(atom).isModule();
      MM_CHECK_NOT_FOUND(ok, "no submodule named '", path, "'", so_far.empty() ? std::string() :
                         " ('" + so_far + "' has no submodule '" + atom + "')");
      m = m.attr(atom).toModule();
      so_far += (so_far.empty() ? "" : ".") + atom;
    }
    return m;
  }

  void resolve_points() {
    for (const std::string& n : names) {
      const auto* obj = resolve(n)._ivalue().get();
      MM_CHECK_ARG(std::find(objects.begin(), objects.end(), obj) == objects.end(),
                   "'", n, "' is named twice (or is the same module as another point)");
      objects.push_back(obj);
    }
  }

  // In copies: nothing the host can see changes until swap_methods.
  void insert_points(const std::string& path) {
    const std::vector<Node*> sites =
        find_call_sites(root, split_path(path), [this](const torch::jit::Module& m) -> const Graphs& {
          return copies_for(m);
        });
    MM_CHECK_ARG(!sites.empty(), "'", path, "' cannot be a mixup point: no method of its parent calls it ",
                 "(was the module frozen or inlined?)");
    for (const Node* call : sites)
      MM_CHECK_ARG(returns_one_tensor(call), "'", path, "' cannot be a mixup point: its forward returns ",
                   call->output(0)->type()->repr_str(), ", not a single Tensor");
    for (Node* call : sites) insert_point_after(call);
  }

  void make_replacements() {
    for (auto& r : rewrites) {
      for (size_t i = 0; i < r.originals.size(); ++i) {
        auto f = std::make_unique<GraphFunction>(r.originals[i]->qualname(), r.copies[i], nullptr);
        f->setSchema(r.originals[i]->getSchema());
        r.replacements.push_back(std::move(f));
      }
    }
  }

  std::vector<c10::ClassTypePtr> types() const {
    std::vector<c10::ClassTypePtr> t;
    for (const auto& r : rewrites) t.push_back(r.type);
    return t;
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

PointRewrite::PointRewrite(std::shared_ptr<Mixer> mixer, torch::jit::Module root, std::vector<std::string> names)
    : impl_(std::make_unique<Impl>()) {
  MM_CHECK_ARG(mixer, "PointRewrite: the mixer is null");
  MM_CHECK_STATE(!mixer->in_batch(), "cannot install mixup points during a batch (end it first)");
  MM_CHECK_STATE(mixer->num_points() == 0, "the mixer already has ", mixer->num_points(),
                 " mixup points (remove their hook first; one hook per mixer)");
  Impl& d = *impl_;
  d.mixer = std::move(mixer);
  d.root = std::move(root);
  if (names.empty()) {
    d.choose_points();
  } else {
    d.names = std::move(names);
    d.selection = std::to_string(d.names.size()) + " named by the host";
  }
  d.resolve_points();
  for (const std::string& n : d.names) d.insert_points(n);
  d.make_replacements();
  const auto types = d.types();
  claim_points(d.objects, d.names, types, d.mixer);
  try {
    for (const std::string& n : d.names) d.mixer->add_point(n);
  } catch (...) {
    release_points(d.objects, types);
    try {
      d.mixer->clear_points();
    } catch (...) {  // only in a batch, which the checks above exclude
    }
    throw;
  }
  d.swap_methods(/*to_replacements=*/true);
  d.installed = true;
}

void PointRewrite::remove() {
  Impl& d = *impl_;
  if (!d.installed) return;
  if (d.mixer->in_batch()) d.mixer->end_batch();
  d.swap_methods(/*to_replacements=*/false);
  release_points(d.objects, d.types());
  d.mixer->clear_points();
  d.rewrites.clear();
  d.objects.clear();
  d.installed = false;
}

PointRewrite::~PointRewrite() {
  if (!impl_) return;
  try {
    remove();
  } catch (...) {  // a destructor must not throw
  }
}

bool PointRewrite::installed() const { return impl_->installed; }
const std::vector<std::string>& PointRewrite::point_names() const { return impl_->names; }
const std::string& PointRewrite::selection() const { return impl_->selection; }
const std::shared_ptr<Mixer>& PointRewrite::mixer() const { return impl_->mixer; }
const torch::jit::Module& PointRewrite::module() const { return impl_->root; }

int64_t PointRewrite::mix_count(size_t i) const {
  MM_CHECK_STATE(impl_->installed, "mix_count: the points have been removed");
  MM_CHECK_ARG(i < impl_->names.size(), "mix_count: point index ", i, " out of range [0, ",
               impl_->names.size(), ")");
  return impl_->mixer->point_mixes().at(i);
}

}  // namespace manifold_mixup
