#!/usr/bin/env bash
# Draws latency against offered rate from the TSV bench/run.sh writes: x the offered rate, y the
# latency, both log scales, one colour per configuration, p99 solid and p50 dashed. The title is
# the TSV's first line (date, machine). Each configuration's points are sorted by rate first:
# run.sh measures the half-rate point before the others.
# Usage: bench/plot.sh [TSV, default target/bench/latency.tsv] [PNG, default target/bench/latency.png]
set -euo pipefail
cd "$(dirname "$0")/.."
tsv=${1:-target/bench/latency.tsv}
png=${2:-target/bench/latency.png}
# pngcairo draws dashes and antialiases; the libgd png terminal is the fallback.
if gnuplot -e 'set terminal' 2>&1 | grep -qw pngcairo; then
  terminal='pngcairo size 1280,900 font "Sans,11"'
else
  terminal='png size 1280,900'
fi
machine=$(sed -n '1s/^# *//p' "$tsv")
# One colour per configuration: bench/run.sh's rows and bench/endtoend.sh's are 14.
colours=("#1f77b4" "#d62728" "#2ca02c" "#ff7f0e" "#9467bd" "#8c564b" "#e377c2" "#17becf" "#7f7f7f"
  "#bcbd22" "#000080" "#800000" "#008080" "#ff00ff" "#556b2f" "#daa520")
quote() { local text=${1//\\/\\\\}; echo "\"${text//\"/\\\"}\""; }

{
  echo "set terminal $terminal"
  echo "set output $(quote "$png")"
  echo 'set datafile separator "\t"'
  echo "set title $(quote "hookbus: latency against offered rate — $machine")"
  echo 'set logscale xy'
  echo 'set format x "%.0s%c"'
  echo 'set autoscale xfix'
  # 1-2-5 ticks: the rates span little more than a decade or two.
  echo 'set xtics (100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6)'
  echo 'set ytics (0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000)'
  echo 'set format y "%g"'
  echo 'set offsets graph 0.04, graph 0.04, 0, 0'
  echo 'set xlabel "offered rate (requests/s, log scale)"'
  echo 'set ylabel "latency (ms, log scale)"'
  echo 'set grid xtics ytics lt 1 lc rgb "#d0d0d0" lw 1'
  echo 'set key outside below center horizontal maxrows 6 box Left reverse'
  echo 'set bmargin 12'
  echo 'set border lw 1'
  plots=()
  n=0
  while IFS= read -r name; do
    echo "\$data$n << EOD"
    awk -F'\t' -v name="$name" '!/^#/ && $1 == name' "$tsv" | sort -t$'\t' -k2,2n
    echo "EOD"
    colour=${colours[n % ${#colours[@]}]}
    # A point with no answers has no latency: left out rather than drawn at 0 on a log axis.
    plots+=("\$data$n using 2:(\$5 > 0 ? \$5 : NaN) with linespoints lc rgb \"$colour\" lw 2 dt 1 pt 7 ps 0.8 title $(quote "$name")")
    plots+=("\$data$n using 2:(\$4 > 0 ? \$4 : NaN) with linespoints lc rgb \"$colour\" lw 2 dt 2 pt 6 ps 0.8 notitle")
    # Answers other than 200 at that rate (a full outbox's 503s): the latency is of the 200s only.
    plots+=("\$data$n using 2:(\$6 > 0 && \$5 > 0 ? \$5 : NaN) with points lc rgb \"$colour\" pt 2 ps 2.5 lw 2 notitle")
    n=$((n + 1))
  done < <(awk -F'\t' '!/^#/ && !seen[$1]++ { print $1 }' "$tsv")
  plots+=('NaN with lines lc rgb "black" lw 2 dt 1 title "p99 (solid)"')
  plots+=('NaN with lines lc rgb "black" lw 2 dt 2 title "p50 (dashed)"')
  plots+=('NaN with points lc rgb "black" pt 2 ps 2.5 lw 2 title "errors at that rate"')
  (IFS=,; echo "plot ${plots[*]}")
} | gnuplot
echo "plot: $png from $tsv" >&2
