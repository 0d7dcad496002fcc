// The rounding-error bound of the decode's Lee certified sign (lee_sign.h states the argument).
//
// The unfused LeeInverse is a straight-line program of adds, subtracts and multiplies by
// float32 constants. It is traced here once per chunk side, node by node; every node carries
// its exact linear form in the inputs (coef), the same form with every constant and sign made
// positive (abs: the sum over paths of |product of constants|, Higham 3.5) and the most
// roundings on any path to it (depth). Float64 computes both forms to ~1e-16 of abs, far below
// the 2^-24-sized quantities they bound; the factor 2 in the bound covers that.
#include <algorithm>
#include <cmath>
#include <vector>

#include "basis.h"
#include "lee_dct.h"

namespace dk {
namespace {

// The traced value: a node's index (-1: V{}, the constant 0). A plain int on purpose:
// LeeInverse's run() is always_inline, and with a Track holding the vectors itself, every copy
// and operation inlined into it made this file take GCC 16 s at -O3 and Clang over a minute.
struct Track {
  int id = -1;
};

// A node of the program: a broadcast constant (V{} + f, no rounding) or a rounded operation.
struct Node {
  bool constant = true;
  double value = 0.0;
  int depth = 0;
  std::vector<double> coef, abs;
};

// The nodes of the program being traced (chunk_bases builds one ChunkBases at a time), and
// whether every operation had the operand kinds the bound models (an add of two traced
// values, a multiply of one by a constant); if not, there is no bound and the Lee sign is off.
thread_local std::vector<Node>* g_nodes = nullptr;
thread_local bool g_modelled = true;

bool traced(Track t) { return t.id >= 0 && !(*g_nodes)[t.id].constant; }

__attribute__((noinline)) Track add_node(Node node) {
  g_nodes->push_back(std::move(node));
  return Track{static_cast<int>(g_nodes->size()) - 1};
}

__attribute__((noinline)) Node node_of(Track t) { return t.id < 0 ? Node{} : (*g_nodes)[t.id]; }

__attribute__((noinline)) Track input(int n, int u) {
  Node node;
  node.constant = false;
  node.coef.assign(n, 0.0);
  node.abs.assign(n, 0.0);
  node.coef[u] = node.abs[u] = 1.0;
  return add_node(std::move(node));
}

__attribute__((noinline)) Track operator+(Track t, float c) {  // V{} + f[...]: a broadcast
  if (t.id >= 0) g_modelled = false;
  Node node;
  node.value = c;
  return add_node(std::move(node));
}

__attribute__((noinline)) Track combine(Track a, Track b, double sign) {  // one rounded add or subtract
  if (!traced(a) || !traced(b)) {
    g_modelled = false;
    return a;
  }
  Node node = node_of(a);
  const Node& o = (*g_nodes)[b.id];
  for (size_t u = 0; u < node.coef.size(); ++u) {
    node.coef[u] += sign * o.coef[u];
    node.abs[u] += o.abs[u];
  }
  node.depth = std::max(node.depth, o.depth) + 1;
  return add_node(std::move(node));
}

Track operator+(Track a, Track b) { return combine(a, b, 1.0); }
Track operator-(Track a, Track b) { return combine(a, b, -1.0); }

__attribute__((noinline)) Track operator*(Track a, Track b) {  // one rounded multiply by a constant
  if (a.id < 0 || b.id < 0 || traced(a) == traced(b)) {
    g_modelled = false;
    return a;
  }
  const Node& first = (*g_nodes)[a.id];
  const Track x = first.constant ? b : a;
  const double c = first.constant ? first.value : (*g_nodes)[b.id].value;
  Node node = node_of(x);
  for (size_t u = 0; u < node.coef.size(); ++u) {
    node.coef[u] *= c;
    node.abs[u] *= std::fabs(c);
  }
  node.depth += 1;
  return add_node(std::move(node));
}

// The outputs' nodes of the unfused inverse with input row 0 times row0_scale.
template <int N>
std::vector<Node> lee_program(float row0_scale) {
  std::vector<Node> nodes;
  g_nodes = &nodes;
  g_modelled = true;
  Track x[N];
  for (int u = 0; u < N; ++u) x[u] = input(N, u);
  x[0] = x[0] * (Track{} + row0_scale);
  LeeInverse<Track, N, false>::run(x, lee_factors());
  std::vector<Node> outputs;
  for (int i = 0; i < N && g_modelled; ++i) {
    if (!traced(x[i])) g_modelled = false;
    else outputs.push_back(nodes[x[i].id]);
  }
  g_nodes = nullptr;
  if (!g_modelled) outputs.clear();
  return outputs;
}

}  // namespace

float lee_row0_scale() { return static_cast<float>(std::sqrt(0.5)); }

std::vector<float> lee_sign_bounds(int cm, int cn, const std::vector<float>& bm,
                                   const std::vector<float>& bn) {
  if (!lee_side(cm)) return {};
  const std::vector<Node> y = cm == 16 ? lee_program<16>(lee_row0_scale())
                               : cm == 32 ? lee_program<32>(lee_row0_scale())
                                          : lee_program<64>(lee_row0_scale());
  if (y.empty()) return {};  // a program shape the bound does not model: no Lee sign
  const double a1 = std::sqrt(2.0 / cm);  // y_lee * a1 approximates sum_u C_m[u][i] T[u]
  const double max_m = max_abs(bm), max_n = max_abs(bn);
  std::vector<float> bounds(cm);
  for (int i = 0; i < cm; ++i) {
    double paths = 0.0, off = 0.0;  // max over u of abs, and of |a1 coef - C_m[u][i]|
    for (int v = 0; v < cm; ++v) {
      paths = std::max(paths, y[i].abs[v]);
      off = std::max(off, std::fabs(a1 * y[i].coef[v] - static_cast<double>(bm[v * cm + i])));
    }
    const double per_t = a1 * gamma_of(y[i].depth) * paths + off + gamma_of(cm) * max_m;
    bounds[i] = std::nextafter(static_cast<float>(2.0 * per_t / a1 * max_n), 1.0f);
  }
  return bounds;
}

}  // namespace dk
