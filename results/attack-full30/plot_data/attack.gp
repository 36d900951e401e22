set terminal pngcairo size 1400,900 font ',10' noenhanced
set key outside right
set grid
set output 'results/attack-full30/accuracy_vs_eps.png'
set multiplot layout 1,3
set ylabel 'accuracy'
set key inside top right
set xlabel 'eps (L-inf)'
set title 'fgsm'
plot 'results/attack-full30/plot_data/fgsm_qknorm.dat' using 1:2 with linespoints title 'qknorm', 'results/attack-full30/plot_data/fgsm_quest.dat' using 1:2 with linespoints title 'quest', 'results/attack-full30/plot_data/fgsm_standard.dat' using 1:2 with linespoints title 'standard'
set xlabel 'eps (L-inf)'
set title 'pgd_linf'
plot 'results/attack-full30/plot_data/pgd_linf_qknorm.dat' using 1:2 with linespoints title 'qknorm', 'results/attack-full30/plot_data/pgd_linf_quest.dat' using 1:2 with linespoints title 'quest', 'results/attack-full30/plot_data/pgd_linf_standard.dat' using 1:2 with linespoints title 'standard'
set xlabel 'eps (L2)'
set title 'pgd_l2'
plot 'results/attack-full30/plot_data/pgd_l2_qknorm.dat' using 1:2 with linespoints title 'qknorm', 'results/attack-full30/plot_data/pgd_l2_quest.dat' using 1:2 with linespoints title 'quest', 'results/attack-full30/plot_data/pgd_l2_standard.dat' using 1:2 with linespoints title 'standard'
unset multiplot
