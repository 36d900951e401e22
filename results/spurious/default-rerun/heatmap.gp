set terminal pngcairo size 1400,900 font ',10' noenhanced
set key outside right
set grid
set terminal pngcairo size 700,560 font ',10' noenhanced
set cbrange [0:1]
set palette defined (0 '#b2182b', 0.5 '#f7f7f7', 1 '#2166ac')
unset key
set xlabel 'learning rate'
set ylabel 'weight decay'
set cblabel 'success rate over seeds'
set xtics ('0.001' 0, '0.003' 1, '0.01' 2)
set ytics ('0' 0, '0.1' 1, '1' 2)
set xrange [-0.5:2.500000]
set yrange [-0.5:2.500000]
set output '/tmp/spurious-new/heatmap-standard.png'
set title 'standard: success rate (robust solution learned)'
plot '/tmp/spurious-new/heatmap-standard.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fillstyle solid 1.0 noborder fillcolor palette, '/tmp/spurious-new/heatmap-standard.dat' using 1:2:4 with labels
set output '/tmp/spurious-new/heatmap-quest.png'
set title 'quest: success rate (robust solution learned)'
plot '/tmp/spurious-new/heatmap-quest.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fillstyle solid 1.0 noborder fillcolor palette, '/tmp/spurious-new/heatmap-quest.dat' using 1:2:4 with labels
set output '/tmp/spurious-new/heatmap-qnorm.png'
set title 'qnorm: success rate (robust solution learned)'
plot '/tmp/spurious-new/heatmap-qnorm.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fillstyle solid 1.0 noborder fillcolor palette, '/tmp/spurious-new/heatmap-qnorm.dat' using 1:2:4 with labels
set output '/tmp/spurious-new/heatmap-qknorm.png'
set title 'qknorm: success rate (robust solution learned)'
plot '/tmp/spurious-new/heatmap-qknorm.dat' using 1:2:(0.5):(0.5):3 with boxxyerror fillstyle solid 1.0 noborder fillcolor palette, '/tmp/spurious-new/heatmap-qknorm.dat' using 1:2:4 with labels
