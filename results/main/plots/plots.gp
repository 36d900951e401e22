set terminal pngcairo size 1400,900 font ',10' noenhanced
set key outside right
set grid
set output 'runs/main/plots/loss.png'
set multiplot layout 1,2
set xlabel 'epoch'
set title 'train loss'
plot 'runs/main/plots/data/run0_epochs.dat' using 1:2 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_epochs.dat' using 1:2 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_epochs.dat' using 1:2 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_epochs.dat' using 1:2 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_epochs.dat' using 1:2 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_epochs.dat' using 1:2 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'validation loss'
plot 'runs/main/plots/data/run0_epochs.dat' using 1:3 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_epochs.dat' using 1:3 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_epochs.dat' using 1:3 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_epochs.dat' using 1:3 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_epochs.dat' using 1:3 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_epochs.dat' using 1:3 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set output 'runs/main/plots/accuracy.png'
set multiplot layout 1,2
set title 'train accuracy'
plot 'runs/main/plots/data/run0_epochs.dat' using 1:4 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_epochs.dat' using 1:4 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_epochs.dat' using 1:4 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_epochs.dat' using 1:4 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_epochs.dat' using 1:4 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_epochs.dat' using 1:4 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'validation accuracy'
plot 'runs/main/plots/data/run0_epochs.dat' using 1:5 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_epochs.dat' using 1:5 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_epochs.dat' using 1:5 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_epochs.dat' using 1:5 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_epochs.dat' using 1:5 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_epochs.dat' using 1:5 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set output 'runs/main/plots/q_norm_max.png'
set multiplot layout 2,3 title 'q_norm_max per layer'
set xlabel 'step'
set key inside top left
set title 'layer 0'
plot 'runs/main/plots/data/run0_layer0.dat' using 1:2 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer0.dat' using 1:2 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer0.dat' using 1:2 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer0.dat' using 1:2 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer0.dat' using 1:2 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer0.dat' using 1:2 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 1'
plot 'runs/main/plots/data/run0_layer1.dat' using 1:2 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer1.dat' using 1:2 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer1.dat' using 1:2 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer1.dat' using 1:2 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer1.dat' using 1:2 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer1.dat' using 1:2 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 2'
plot 'runs/main/plots/data/run0_layer2.dat' using 1:2 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer2.dat' using 1:2 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer2.dat' using 1:2 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer2.dat' using 1:2 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer2.dat' using 1:2 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer2.dat' using 1:2 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 3'
plot 'runs/main/plots/data/run0_layer3.dat' using 1:2 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer3.dat' using 1:2 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer3.dat' using 1:2 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer3.dat' using 1:2 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer3.dat' using 1:2 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer3.dat' using 1:2 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set key outside right
set output 'runs/main/plots/k_norm_max.png'
set multiplot layout 2,3 title 'k_norm_max per layer'
set xlabel 'step'
set key inside top left
set title 'layer 0'
plot 'runs/main/plots/data/run0_layer0.dat' using 1:3 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer0.dat' using 1:3 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer0.dat' using 1:3 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer0.dat' using 1:3 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer0.dat' using 1:3 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer0.dat' using 1:3 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 1'
plot 'runs/main/plots/data/run0_layer1.dat' using 1:3 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer1.dat' using 1:3 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer1.dat' using 1:3 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer1.dat' using 1:3 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer1.dat' using 1:3 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer1.dat' using 1:3 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 2'
plot 'runs/main/plots/data/run0_layer2.dat' using 1:3 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer2.dat' using 1:3 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer2.dat' using 1:3 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer2.dat' using 1:3 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer2.dat' using 1:3 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer2.dat' using 1:3 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 3'
plot 'runs/main/plots/data/run0_layer3.dat' using 1:3 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer3.dat' using 1:3 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer3.dat' using 1:3 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer3.dat' using 1:3 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer3.dat' using 1:3 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer3.dat' using 1:3 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set key outside right
set output 'runs/main/plots/logit_abs_max.png'
set multiplot layout 2,3 title 'logit_abs_max per layer'
set xlabel 'step'
set key inside top left
set title 'layer 0'
plot 'runs/main/plots/data/run0_layer0.dat' using 1:4 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer0.dat' using 1:4 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer0.dat' using 1:4 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer0.dat' using 1:4 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer0.dat' using 1:4 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer0.dat' using 1:4 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 1'
plot 'runs/main/plots/data/run0_layer1.dat' using 1:4 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer1.dat' using 1:4 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer1.dat' using 1:4 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer1.dat' using 1:4 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer1.dat' using 1:4 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer1.dat' using 1:4 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 2'
plot 'runs/main/plots/data/run0_layer2.dat' using 1:4 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer2.dat' using 1:4 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer2.dat' using 1:4 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer2.dat' using 1:4 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer2.dat' using 1:4 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer2.dat' using 1:4 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 3'
plot 'runs/main/plots/data/run0_layer3.dat' using 1:4 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer3.dat' using 1:4 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer3.dat' using 1:4 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer3.dat' using 1:4 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer3.dat' using 1:4 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer3.dat' using 1:4 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set key outside right
set output 'runs/main/plots/entropy.png'
set multiplot layout 2,3 title 'entropy per layer'
set xlabel 'step'
set key inside top left
set title 'layer 0'
plot 'runs/main/plots/data/run0_layer0.dat' using 1:5 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer0.dat' using 1:5 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer0.dat' using 1:5 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer0.dat' using 1:5 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer0.dat' using 1:5 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer0.dat' using 1:5 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 1'
plot 'runs/main/plots/data/run0_layer1.dat' using 1:5 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer1.dat' using 1:5 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer1.dat' using 1:5 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer1.dat' using 1:5 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer1.dat' using 1:5 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer1.dat' using 1:5 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 2'
plot 'runs/main/plots/data/run0_layer2.dat' using 1:5 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer2.dat' using 1:5 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer2.dat' using 1:5 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer2.dat' using 1:5 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer2.dat' using 1:5 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer2.dat' using 1:5 with lines lc 3 dt 2 title 'standard/seed-1'
set title 'layer 3'
plot 'runs/main/plots/data/run0_layer3.dat' using 1:5 with lines lc 1 dt 1 title 'qknorm/seed-0', 'runs/main/plots/data/run1_layer3.dat' using 1:5 with lines lc 1 dt 2 title 'qknorm/seed-1', 'runs/main/plots/data/run2_layer3.dat' using 1:5 with lines lc 2 dt 1 title 'quest/seed-0', 'runs/main/plots/data/run3_layer3.dat' using 1:5 with lines lc 2 dt 2 title 'quest/seed-1', 'runs/main/plots/data/run4_layer3.dat' using 1:5 with lines lc 3 dt 1 title 'standard/seed-0', 'runs/main/plots/data/run5_layer3.dat' using 1:5 with lines lc 3 dt 2 title 'standard/seed-1'
unset multiplot
set key outside right
