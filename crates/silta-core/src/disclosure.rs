//! Statistical disclosure control for the programme statistics: which counts of a table may be
//! published, following Statistics Finland and THL practice (a frequency threshold with primary
//! and complementary cell suppression).
//!
//! A [`Table`] is an additive table of counts, rows × columns; [`release`] returns its
//! [`Released`] form with the row totals, column totals and grand total, where
//!
//! - **primary suppression** hides every count `n` with `1 ≤ n < threshold`, cells and totals
//!   alike;
//! - **zeros are published**: an empty category identifies nobody, and hiding zeros would make
//!   most of a sparse table unreadable (Statistics Finland and THL both publish them). What
//!   that implies: a reader learns that an organisation had *no* events of a kind, and when all
//!   but one cell of a row are zero the remaining cell equals the row total (both are then
//!   published or both suppressed, since they are equal). The counts here are events per
//!   organisation, never persons, so this is accepted;
//! - **complementary suppression** hides further counts until no hidden count can be
//!   recomputed *exactly* from the published ones by the table's additivity (sums of rows,
//!   columns and totals).
//!
//! **The model.** Write the table with its margins as an (R+1)×(C+1) array `y`, with the row
//! totals and column totals negated and the grand total as is: every row and every column of `y`
//! sums to zero, and these R+C+2 equations are everything a reader knows besides the published
//! values. The hidden entries are the edges of a bipartite graph between the R+1 row nodes and
//! the C+1 column nodes, and the equations restricted to them are that graph's incidence
//! matrix. A hidden entry is determined by the published values iff its unit vector lies in
//! the row space of that matrix (the cut space of the graph), that is iff its edge is a
//! **bridge**. So [`release`] suppresses more entries until the graph has no bridge: for the
//! first bridge `(r, c)` (row-major order), with `A` and `B` the two sides it separates, it
//! hides the cheapest published entry that joins a row of `A` to a column of `B` or a row of
//! `B` to a column of `A` (which closes a cycle through the bridge). When no such entry exists
//! (a side is a lone node), it hides the cheapest published entry from the lone node to a node
//! outside the other side, which gives that side a node to close the cycle with next time.
//!
//! **Cheapest** means, in order: a non-zero count before a zero (a hidden zero next to a small
//! count would let a reader bound the small count by non-negativity to `[0, small]`; a larger
//! partner widens that interval), then the smaller count (less information lost), then a cell
//! before a total (totals are what readers use most), then row-major position, so the output is
//! a function of the input alone.
//!
//! **What this does not do:** it prevents exact recomputation, which is the requirement; it
//! does not guarantee a minimum width of the interval a reader can derive with linear
//! programming from non-negativity (τ-ARGUS's "protection levels"), and it protects one table
//! at a time: tables released together that share cells must be built so that their shared
//! margins agree (the same hidden entries), or be suppressed jointly.

use serde::{Deserialize, Serialize};

/// The threshold used unless a caller chooses one: counts of 1–4 are hidden (THL's and
/// Statistics Finland's customary rule for register-based frequency tables).
pub const DEFAULT_THRESHOLD: u64 = 5;

/// The lowest threshold [`release`] applies: a count of 1 or 2 is never published, whatever a
/// caller asks for (a count of 1 singles out one event, 2 lets either party identify the other).
pub const MIN_THRESHOLD: u64 = 3;

/// An additive table of counts: `cells[r][c]` counts row `rows[r]` and column `columns[c]`.
///
/// The totals are not given: [`release`] computes them, so they cannot disagree with the cells.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Table {
    /// A stable identifier (e.g. `reports_by_flow`).
    pub id: String,
    /// A human title.
    pub title: String,
    /// The row labels.
    pub rows: Vec<String>,
    /// The column labels.
    pub columns: Vec<String>,
    /// The counts, one vector per row, one count per column. A missing count reads as zero and
    /// a count beyond the columns is ignored, so a ragged table still releases consistently;
    /// [`Table::is_rectangular`] lets a caller refuse one instead.
    pub cells: Vec<Vec<u64>>,
}

impl Table {
    /// Whether `cells` has one vector per row and one count per column in each.
    pub fn is_rectangular(&self) -> bool {
        self.cells.len() == self.rows.len()
            && self.cells.iter().all(|row| row.len() == self.columns.len())
    }

    /// The count at `(r, c)`, zero where the table is short.
    fn count(&self, r: usize, c: usize) -> u64 {
        self.cells
            .get(r)
            .and_then(|row| row.get(c))
            .copied()
            .unwrap_or(0)
    }
}

/// A count as released: its value, or hidden.
///
/// Serialised as a JSON number, or `null` when suppressed (a consumer that ignores the
/// distinction then sees "missing", never a wrong number; `0` would be one).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(from = "Option<u64>", into = "Option<u64>")]
pub enum Shown {
    /// The published count.
    Value(u64),
    /// Hidden: a count below the threshold, or one that would let a reader recompute one.
    Suppressed,
}

impl Shown {
    /// The value, if published.
    pub fn value(self) -> Option<u64> {
        match self {
            Shown::Value(n) => Some(n),
            Shown::Suppressed => None,
        }
    }

    /// Whether the count is hidden.
    pub fn is_suppressed(self) -> bool {
        matches!(self, Shown::Suppressed)
    }
}

impl From<Option<u64>> for Shown {
    fn from(value: Option<u64>) -> Shown {
        value.map_or(Shown::Suppressed, Shown::Value)
    }
}

impl From<Shown> for Option<u64> {
    fn from(shown: Shown) -> Option<u64> {
        shown.value()
    }
}

/// A table as it may be published: every count is either its true value or
/// [`Shown::Suppressed`], and no suppressed count can be recomputed from the shown ones (see
/// the module documentation for the model).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    /// The table's identifier.
    pub id: String,
    /// The table's title.
    pub title: String,
    /// The row labels.
    pub rows: Vec<String>,
    /// The column labels.
    pub columns: Vec<String>,
    /// The threshold applied (after raising to [`MIN_THRESHOLD`]): counts of 1 to
    /// `threshold - 1` are hidden. Renderers show it in their legend.
    pub threshold: u64,
    /// The counts, rows × columns.
    pub cells: Vec<Vec<Shown>>,
    /// Each row's total.
    pub row_totals: Vec<Shown>,
    /// Each column's total.
    pub column_totals: Vec<Shown>,
    /// The grand total.
    pub total: Shown,
}

/// Releases `table` under `threshold`: primary suppression of every count (cell or total) `n`
/// with `1 ≤ n < threshold`, then complementary suppression until no hidden count can be
/// recomputed from the published ones.
///
/// A `threshold` below [`MIN_THRESHOLD`] is raised to it (a plain number keeps configuration
/// simple; the floor is enforced here, where it matters, rather than at every caller). Totals
/// saturate at `u64::MAX`, far beyond any monthly count. The result depends on the input alone.
pub fn release(table: &Table, threshold: u64) -> Released {
    let threshold = threshold.max(MIN_THRESHOLD);
    let grid = Grid::of(table);
    let mut hidden: Vec<Vec<bool>> = grid
        .values
        .iter()
        .map(|row| row.iter().map(|&n| (1..threshold).contains(&n)).collect())
        .collect();
    protect(&grid, &mut hidden);

    let show = |r: usize, c: usize| {
        if hidden[r][c] {
            Shown::Suppressed
        } else {
            Shown::Value(grid.values[r][c])
        }
    };
    let (rows, cols) = (table.rows.len(), table.columns.len());
    Released {
        id: table.id.clone(),
        title: table.title.clone(),
        rows: table.rows.clone(),
        columns: table.columns.clone(),
        threshold,
        cells: (0..rows)
            .map(|r| (0..cols).map(|c| show(r, c)).collect())
            .collect(),
        row_totals: (0..rows).map(|r| show(r, cols)).collect(),
        column_totals: (0..cols).map(|c| show(rows, c)).collect(),
        total: show(rows, cols),
    }
}

/// The table with its margins: `values[r][c]` for `r ≤ R`, `c ≤ C`, where row `R` holds the
/// column totals, column `C` the row totals and `(R, C)` the grand total.
struct Grid {
    values: Vec<Vec<u64>>,
    rows: usize,
    cols: usize,
}

impl Grid {
    fn of(table: &Table) -> Grid {
        let (rows, cols) = (table.rows.len(), table.columns.len());
        let mut values = vec![vec![0u64; cols + 1]; rows + 1];
        for r in 0..rows {
            for c in 0..cols {
                let n = table.count(r, c);
                values[r][c] = n;
                values[r][cols] = values[r][cols].saturating_add(n);
                values[rows][c] = values[rows][c].saturating_add(n);
                values[rows][cols] = values[rows][cols].saturating_add(n);
            }
        }
        Grid { values, rows, cols }
    }

    /// The order in which complementary candidates are preferred (smallest first).
    fn cost(&self, r: usize, c: usize) -> (bool, u64, bool, usize, usize) {
        let n = self.values[r][c];
        (n == 0, n, r == self.rows || c == self.cols, r, c)
    }
}

/// Row node `r` is node `r`; column node `c` is node `row_nodes + c`.
struct Graph {
    row_nodes: usize,
    adjacency: Vec<Vec<usize>>,
}

impl Graph {
    fn of(hidden: &[Vec<bool>]) -> Graph {
        let row_nodes = hidden.len();
        let col_nodes = hidden.first().map_or(0, Vec::len);
        let mut adjacency = vec![Vec::new(); row_nodes + col_nodes];
        for (r, row) in hidden.iter().enumerate() {
            for (c, &h) in row.iter().enumerate() {
                if h {
                    adjacency[r].push(row_nodes + c);
                    adjacency[row_nodes + c].push(r);
                }
            }
        }
        Graph {
            row_nodes,
            adjacency,
        }
    }

    /// The bridges, as `(row, column)` entries in row-major order (Tarjan's low-link, on a
    /// simple graph: no entry is an edge twice).
    fn bridges(&self) -> Vec<(usize, usize)> {
        let n = self.adjacency.len();
        let mut order = vec![usize::MAX; n];
        let mut low = vec![0usize; n];
        let mut next = 0;
        let mut found = Vec::new();
        for root in 0..n {
            if order[root] != usize::MAX {
                continue;
            }
            // An explicit stack of (node, parent, next neighbour index): no recursion depth to
            // worry about on a wide table.
            let mut stack = vec![(root, usize::MAX, 0usize)];
            order[root] = next;
            low[root] = next;
            next += 1;
            while let Some(&mut (node, parent, ref mut i)) = stack.last_mut() {
                if let Some(&to) = self.adjacency[node].get(*i) {
                    *i += 1;
                    if to == parent {
                        continue;
                    }
                    if order[to] == usize::MAX {
                        order[to] = next;
                        low[to] = next;
                        next += 1;
                        stack.push((to, node, 0));
                    } else {
                        low[node] = low[node].min(order[to]);
                    }
                } else {
                    stack.pop();
                    if parent != usize::MAX {
                        low[parent] = low[parent].min(low[node]);
                        if low[node] > order[parent] {
                            found.push(self.entry(parent, node));
                        }
                    }
                }
            }
        }
        found.sort_unstable();
        found
    }

    /// The `(row, column)` entry of the edge between nodes `a` and `b`.
    fn entry(&self, a: usize, b: usize) -> (usize, usize) {
        if a < self.row_nodes {
            (a, b - self.row_nodes)
        } else {
            (b, a - self.row_nodes)
        }
    }

    /// The nodes reachable from `start` without crossing the edge `a`–`b`.
    fn side(&self, start: usize, a: usize, b: usize) -> Vec<bool> {
        let mut seen = vec![false; self.adjacency.len()];
        let mut todo = vec![start];
        seen[start] = true;
        while let Some(node) = todo.pop() {
            for &to in &self.adjacency[node] {
                let cut = (node == a && to == b) || (node == b && to == a);
                if !cut && !seen[to] {
                    seen[to] = true;
                    todo.push(to);
                }
            }
        }
        seen
    }
}

/// Complementary suppression: hides entries until no hidden entry is a bridge.
///
/// Terminates: every round hides one more entry, and with every entry hidden the graph is the
/// complete bipartite graph on at least 2 + 2 nodes, which has no bridge.
fn protect(grid: &Grid, hidden: &mut [Vec<bool>]) {
    loop {
        let graph = Graph::of(hidden);
        let Some(&(r, c)) = graph.bridges().first() else {
            return;
        };
        let (row_node, col_node) = (r, graph.row_nodes + c);
        let a = graph.side(row_node, row_node, col_node);
        let b = graph.side(col_node, row_node, col_node);

        let published = |i: usize, j: usize| !hidden[i][j];
        let mut candidates: Vec<(usize, usize)> = Vec::new();
        for i in 0..=grid.rows {
            for j in 0..=grid.cols {
                let col = graph.row_nodes + j;
                if published(i, j) && ((a[i] && b[col]) || (b[i] && a[col])) {
                    candidates.push((i, j));
                }
            }
        }
        if candidates.is_empty() {
            // A side is a lone node: join it to a node beyond the other side.
            let a_has_column = (graph.row_nodes..a.len()).any(|n| a[n]);
            let b_has_row = (0..graph.row_nodes).any(|n| b[n]);
            if !a_has_column {
                candidates.extend(
                    (0..=grid.cols)
                        .filter(|&j| !b[graph.row_nodes + j] && published(r, j))
                        .map(|j| (r, j)),
                );
            }
            if !b_has_row {
                candidates.extend(
                    (0..=grid.rows)
                        .filter(|&i| !a[i] && published(i, c))
                        .map(|i| (i, c)),
                );
            }
        }
        let Some(&(i, j)) = candidates.iter().min_by_key(|&&(i, j)| grid.cost(i, j)) else {
            // Unreachable (see the module documentation: a lone side always has a partner
            // beyond the other side); hiding everything is the safe fallback.
            hidden.iter_mut().for_each(|row| row.fill(true));
            return;
        };
        hidden[i][j] = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn table(cells: &[&[u64]]) -> Table {
        Table {
            id: "t".into(),
            title: "T".into(),
            rows: (0..cells.len()).map(|r| format!("r{r}")).collect(),
            columns: (0..cells.first().map_or(0, |row| row.len()))
                .map(|c| format!("c{c}"))
                .collect(),
            cells: cells.iter().map(|row| row.to_vec()).collect(),
        }
    }

    /// The released table with its margins as a grid of `Option`s, row `R` and column `C` the
    /// totals, as [`Grid`] lays them out.
    fn grid_of(released: &Released) -> Vec<Vec<Option<u64>>> {
        let mut out: Vec<Vec<Option<u64>>> = released
            .cells
            .iter()
            .zip(&released.row_totals)
            .map(|(row, total)| row.iter().chain([total]).map(|s| s.value()).collect())
            .collect();
        out.push(
            released
                .column_totals
                .iter()
                .chain([&released.total])
                .map(|s| s.value())
                .collect(),
        );
        out
    }

    /// True values with margins, computed here independently of [`Grid`].
    fn truth(t: &Table) -> Vec<Vec<u64>> {
        let cols = t.columns.len();
        let mut out: Vec<Vec<u64>> = t
            .cells
            .iter()
            .map(|row| row.iter().copied().chain([row.iter().sum()]).collect())
            .collect();
        let column_totals = (0..cols).map(|c| t.cells.iter().map(|row| row[c]).sum());
        out.push(
            column_totals
                .chain([t.cells.iter().flatten().sum()])
                .collect(),
        );
        out
    }

    fn gcd(a: i128, b: i128) -> i128 {
        let (mut a, mut b) = (a.abs(), b.abs());
        while b != 0 {
            (a, b) = (b, a % b);
        }
        a
    }

    /// Rank of an integer matrix over the rationals, by fraction-free Gaussian elimination
    /// (each row divided by its gcd to keep the numbers small).
    fn rank(mut m: Vec<Vec<i128>>) -> usize {
        let width = m.first().map_or(0, Vec::len);
        let mut rank = 0;
        for col in 0..width {
            let Some(p) = (rank..m.len()).find(|&i| m[i][col] != 0) else {
                continue;
            };
            m.swap(rank, p);
            for i in 0..m.len() {
                if i != rank && m[i][col] != 0 {
                    let (f, g) = (m[i][col], m[rank][col]);
                    let pivot = m[rank].clone();
                    for (x, y) in m[i].iter_mut().zip(&pivot) {
                        *x = *x * g - *y * f;
                    }
                    let d = m[i].iter().fold(0, |acc, &x| gcd(acc, x));
                    if d > 1 {
                        m[i].iter_mut().for_each(|x| *x /= d);
                    }
                }
            }
            rank += 1;
        }
        rank
    }

    /// The hidden entries that a reader can recompute exactly from the published values and
    /// the table's sums, by linear algebra on the constraint system (not the bridge argument).
    fn derivable(released: &Released) -> Vec<(usize, usize)> {
        let shown = grid_of(released);
        let (rows, cols) = (released.rows.len(), released.columns.len());
        let unknowns: Vec<(usize, usize)> = (0..=rows)
            .flat_map(|r| (0..=cols).map(move |c| (r, c)))
            .filter(|&(r, c)| shown[r][c].is_none())
            .collect();
        let index = |r: usize, c: usize| unknowns.iter().position(|&u| u == (r, c));
        // One equation per row and per column: the cells minus the total are zero (for the
        // totals row, the column totals minus the grand total; likewise for the totals column).
        let mut system: Vec<Vec<i128>> = Vec::new();
        for r in 0..=rows {
            let mut eq = vec![0i128; unknowns.len()];
            for c in 0..=cols {
                if let Some(k) = index(r, c) {
                    eq[k] += if c == cols { -1 } else { 1 };
                }
            }
            system.push(eq);
        }
        for c in 0..=cols {
            let mut eq = vec![0i128; unknowns.len()];
            for r in 0..=rows {
                if let Some(k) = index(r, c) {
                    eq[k] += if r == rows { -1 } else { 1 };
                }
            }
            system.push(eq);
        }
        let base = rank(system.clone());
        unknowns
            .iter()
            .enumerate()
            .filter(|&(k, _)| {
                let mut with = system.clone();
                let mut e = vec![0i128; unknowns.len()];
                e[k] = 1;
                with.push(e);
                rank(with) == base
            })
            .map(|(_, &u)| u)
            .collect()
    }

    fn check_release(t: &Table, threshold: u64) {
        let released = release(t, threshold);
        let effective = threshold.max(MIN_THRESHOLD);
        assert_eq!(released.threshold, effective);
        let true_values = truth(t);
        let shown = grid_of(&released);
        for (r, row) in true_values.iter().enumerate() {
            for (c, &n) in row.iter().enumerate() {
                if let Some(v) = shown[r][c] {
                    assert_eq!(v, n, "published ({r},{c}) must be true");
                    assert!(n == 0 || n >= effective, "({r},{c})={n} published");
                }
            }
        }
        assert_eq!(derivable(&released), vec![], "{t:?} → {released:?}");
        assert_eq!(release(t, threshold), released, "deterministic");
    }

    #[test]
    fn one_small_cell_in_a_two_by_two_hides_a_rectangle() {
        let t = table(&[&[2, 10], &[10, 10]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        use Shown::{Suppressed as S, Value as V};
        // The 2 and its row and column totals (12) are not small, but the 2 must hide with a
        // partner in its row and column, and their common partner closes the rectangle.
        assert_eq!(r.cells, vec![vec![S, S], vec![S, S]]);
        assert_eq!(r.row_totals, vec![V(12), V(20)]);
        assert_eq!(r.column_totals, vec![V(12), V(20)]);
        assert_eq!(r.total, V(32));
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn a_row_with_one_small_cell_hides_it_with_a_partner_in_the_row_and_column() {
        let t = table(&[&[3, 20, 30], &[12, 40, 50], &[15, 60, 70]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        assert!(r.cells[0][0].is_suppressed());
        let hidden_in_row_0 = r.cells[0].iter().filter(|s| s.is_suppressed()).count();
        let hidden_in_col_0 = r.cells.iter().filter(|row| row[0].is_suppressed()).count();
        assert!(hidden_in_row_0 >= 2 && hidden_in_col_0 >= 2);
        // The smallest partners are chosen: 12 below it, 20 beside it, 40 to close.
        assert!(r.cells[1][0].is_suppressed() && r.cells[0][1].is_suppressed());
        assert!(r.cells[1][1].is_suppressed());
        assert_eq!(r.total, Shown::Value(300));
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn an_all_zero_table_is_published_as_zeros() {
        let t = table(&[&[0, 0], &[0, 0], &[0, 0]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        assert!(r.cells.iter().flatten().all(|s| *s == Shown::Value(0)));
        assert!(r.row_totals.iter().all(|s| *s == Shown::Value(0)));
        assert_eq!(r.total, Shown::Value(0));
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn an_all_small_table_hides_every_count_but_its_zero() {
        let t = table(&[&[1, 2], &[1, 0]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        use Shown::{Suppressed as S, Value as V};
        // The zero stays: the other eight entries already form a graph without a bridge.
        assert_eq!(r.cells, vec![vec![S, S], vec![S, V(0)]]);
        assert!(
            r.row_totals
                .iter()
                .chain(&r.column_totals)
                .all(|s| s.is_suppressed())
        );
        assert!(r.total.is_suppressed());
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn a_small_grand_total_is_hidden_with_a_partner() {
        // One row: the row total is the grand total, both 4.
        let t = table(&[&[0, 4]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        assert!(r.total.is_suppressed() && r.row_totals[0].is_suppressed());
        assert!(r.cells[0][1].is_suppressed() && r.column_totals[1].is_suppressed());
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn complements_prefer_a_non_zero_count_to_a_zero() {
        // The zero beside the 2 would be the cheapest partner, but a hidden zero bounds the 2
        // to [0, 2]; the 10 beside it is taken instead.
        let t = table(&[&[2, 0, 10], &[10, 10, 10]]);
        let r = release(&t, DEFAULT_THRESHOLD);
        use Shown::{Suppressed as S, Value as V};
        assert_eq!(r.cells, vec![vec![S, V(0), S], vec![S, V(10), S]]);
        check_release(&t, DEFAULT_THRESHOLD);
    }

    #[test]
    fn an_empty_table_releases_an_empty_table() {
        let r = release(&table(&[]), DEFAULT_THRESHOLD);
        assert!(r.cells.is_empty() && r.row_totals.is_empty() && r.column_totals.is_empty());
        assert_eq!(r.total, Shown::Value(0));
    }

    #[test]
    fn a_threshold_below_the_minimum_is_raised() {
        let t = table(&[&[2, 10], &[10, 10]]);
        assert_eq!(release(&t, 0).threshold, MIN_THRESHOLD);
        assert!(release(&t, 1).cells[0][0].is_suppressed());
        check_release(&t, 1);
    }

    #[test]
    fn a_ragged_table_reads_missing_counts_as_zero() {
        let mut t = table(&[&[10, 10], &[10, 10]]);
        t.cells[1].pop();
        assert!(!t.is_rectangular());
        let r = release(&t, DEFAULT_THRESHOLD);
        assert_eq!(r.cells[1][1], Shown::Value(0));
        assert_eq!(r.total, Shown::Value(30));
    }

    #[test]
    fn shown_serialises_as_a_number_or_null() {
        let json = serde_json::to_string(&[Shown::Value(7), Shown::Suppressed]).ok();
        assert_eq!(json.as_deref(), Some("[7,null]"));
        let back: Option<Vec<Shown>> = serde_json::from_str("[7,null]").ok();
        assert_eq!(back, Some(vec![Shown::Value(7), Shown::Suppressed]));
    }

    #[test]
    fn the_independent_check_finds_an_exposed_cell() {
        // Guards the checker itself: hiding only the 2 of a 2×2 leaves it derivable.
        let t = table(&[&[2, 10], &[10, 10]]);
        let mut r = release(&t, DEFAULT_THRESHOLD);
        r.cells = vec![
            vec![Shown::Suppressed, Shown::Value(10)],
            vec![Shown::Value(10), Shown::Value(10)],
        ];
        assert_eq!(derivable(&r), vec![(0, 0)]);
    }

    fn small_tables() -> impl Strategy<Value = Table> {
        // Skewed small: half the counts in 0..5, where the suppression happens.
        let count = prop_oneof![0u64..5, 0u64..30];
        (1usize..=6, 1usize..=6).prop_flat_map(move |(rows, cols)| {
            proptest::collection::vec(proptest::collection::vec(count.clone(), cols), rows)
                .prop_map(move |cells| Table {
                    id: "t".into(),
                    title: "T".into(),
                    rows: (0..rows).map(|r| format!("r{r}")).collect(),
                    columns: (0..cols).map(|c| format!("c{c}")).collect(),
                    cells,
                })
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn released_tables_hide_small_counts_and_reveal_none(
            t in small_tables(),
            threshold in 3u64..=8,
        ) {
            let released = release(&t, threshold);
            let true_values = truth(&t);
            let shown = grid_of(&released);
            for (r, row) in true_values.iter().enumerate() {
                for (c, &n) in row.iter().enumerate() {
                    // (a) every small count is hidden
                    if (1..threshold).contains(&n) {
                        prop_assert_eq!(shown[r][c], None, "({},{})={} shown", r, c, n);
                    }
                    // (c) every published count is the true one
                    if let Some(v) = shown[r][c] {
                        prop_assert_eq!(v, n);
                    }
                }
            }
            // (b) no hidden count follows from the published ones
            prop_assert_eq!(derivable(&released), vec![]);
            // (d) the same table gives the same release
            prop_assert_eq!(release(&t.clone(), threshold), released);
        }
    }
}
