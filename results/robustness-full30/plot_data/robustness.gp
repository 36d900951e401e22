set terminal pngcairo size 1400,900 font ',10' noenhanced
set key outside right
set grid
set xlabel 'severity'
set ylabel 'accuracy'
set xtics 1
set output 'results/robustness-full30/accuracy_vs_severity.png'
set title 'mean accuracy over 15 corruptions (mean over checkpoints)'
plot 'results/robustness-full30/plot_data/qknorm_mean.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_mean.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_mean.dat' using 1:2 with linespoints title 'standard'
set output 'results/robustness-full30/accuracy_by_corruption.png'
set terminal pngcairo size 1600,1200 font ',9' noenhanced
set key inside bottom left
set multiplot layout 4,4
set title 'gaussian_noise'
plot 'results/robustness-full30/plot_data/qknorm_gaussian_noise.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_gaussian_noise.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_gaussian_noise.dat' using 1:2 with linespoints title 'standard'
set title 'shot_noise'
plot 'results/robustness-full30/plot_data/qknorm_shot_noise.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_shot_noise.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_shot_noise.dat' using 1:2 with linespoints title 'standard'
set title 'impulse_noise'
plot 'results/robustness-full30/plot_data/qknorm_impulse_noise.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_impulse_noise.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_impulse_noise.dat' using 1:2 with linespoints title 'standard'
set title 'speckle_noise'
plot 'results/robustness-full30/plot_data/qknorm_speckle_noise.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_speckle_noise.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_speckle_noise.dat' using 1:2 with linespoints title 'standard'
set title 'gaussian_blur'
plot 'results/robustness-full30/plot_data/qknorm_gaussian_blur.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_gaussian_blur.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_gaussian_blur.dat' using 1:2 with linespoints title 'standard'
set title 'glass_blur'
plot 'results/robustness-full30/plot_data/qknorm_glass_blur.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_glass_blur.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_glass_blur.dat' using 1:2 with linespoints title 'standard'
set title 'defocus_blur'
plot 'results/robustness-full30/plot_data/qknorm_defocus_blur.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_defocus_blur.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_defocus_blur.dat' using 1:2 with linespoints title 'standard'
set title 'motion_blur'
plot 'results/robustness-full30/plot_data/qknorm_motion_blur.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_motion_blur.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_motion_blur.dat' using 1:2 with linespoints title 'standard'
set title 'zoom_blur'
plot 'results/robustness-full30/plot_data/qknorm_zoom_blur.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_zoom_blur.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_zoom_blur.dat' using 1:2 with linespoints title 'standard'
set title 'contrast'
plot 'results/robustness-full30/plot_data/qknorm_contrast.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_contrast.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_contrast.dat' using 1:2 with linespoints title 'standard'
set title 'brightness'
plot 'results/robustness-full30/plot_data/qknorm_brightness.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_brightness.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_brightness.dat' using 1:2 with linespoints title 'standard'
set title 'fog'
plot 'results/robustness-full30/plot_data/qknorm_fog.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_fog.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_fog.dat' using 1:2 with linespoints title 'standard'
set title 'pixelate'
plot 'results/robustness-full30/plot_data/qknorm_pixelate.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_pixelate.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_pixelate.dat' using 1:2 with linespoints title 'standard'
set title 'jpeg_compression'
plot 'results/robustness-full30/plot_data/qknorm_jpeg_compression.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_jpeg_compression.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_jpeg_compression.dat' using 1:2 with linespoints title 'standard'
set title 'elastic_transform'
plot 'results/robustness-full30/plot_data/qknorm_elastic_transform.dat' using 1:2 with linespoints title 'qknorm', 'results/robustness-full30/plot_data/quest_elastic_transform.dat' using 1:2 with linespoints title 'quest', 'results/robustness-full30/plot_data/standard_elastic_transform.dat' using 1:2 with linespoints title 'standard'
unset multiplot
